// Command yardstick is the benchmarks' compiled reference: a chained CNI plugin, Go standard
// library only, doing the necessary work of istio-cni's ADD and nothing else. Every pod-start
// benchmark runs it interleaved with ours and reports our times as multiples of its times.
//
// ADD, redirected pod: read the netconf from stdin; read the kubeconfig's server, CA and token;
// one pod GET over TLS with the bearer token; decide skip or redirect (minimally: an
// istio-proxy container and the sidecar status annotation, no istio-init); enter CNI_NETNS on
// a locked OS thread; one restore of the payload the bench wrote to yardstick.payload_file
// (the bytes our rules module builds for that pod), with the argv in yardstick.apply
// (iptables-nft-restore --noflush, nft -f -, ...); print prevResult.
//
// ADD, excluded namespace: print prevResult, no API call, no netns. DEL and CHECK: nothing to
// do (the benchmarks time ADD only). VERSION: the versions spoken.
//
// It is a yardstick, not a plugin to deploy: it does no retries, no CHECK, no IPv6 and no
// validation beyond what a failure would need to be readable.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

const maxInput = 1 << 20

type netConf struct {
	CNIVersion        string          `json:"cniVersion"`
	ExcludeNamespaces []string        `json:"exclude_namespaces"`
	RunDir            string          `json:"cni_agent_run_dir"`
	PrevResult        json.RawMessage `json:"prevResult"`
	Kubernetes        struct {
		Kubeconfig        string   `json:"kubeconfig"`
		ExcludeNamespaces []string `json:"exclude_namespaces"`
	} `json:"kubernetes"`
	Yardstick struct {
		Apply       []string `json:"apply"`
		PayloadFile string   `json:"payload_file"`
		Env         []string `json:"env"`
	} `json:"yardstick"`
}

type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Contexts       []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	Clusters []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server string `json:"server"`
			CAData string `json:"certificate-authority-data"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token string `json:"token"`
		} `json:"user"`
	} `json:"users"`
}

type pod struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers     []struct{ Name string } `json:"containers"`
		InitContainers []struct{ Name string } `json:"initContainers"`
	} `json:"spec"`
}

func main() {
	// setns(2) changes the calling thread only: keep this goroutine, and the child started
	// from it, on the thread that enters the pod's netns.
	runtime.LockOSThread()
	version := "1.0.0"
	if err := run(&version); err != nil {
		out, _ := json.Marshal(map[string]any{"cniVersion": version, "code": 999, "msg": err.Error()})
		os.Stdout.Write(append(out, '\n'))
		os.Exit(1)
	}
}

func run(version *string) error {
	switch os.Getenv("CNI_COMMAND") {
	case "VERSION":
		fmt.Println(`{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`)
		return nil
	case "DEL", "CHECK", "GC", "STATUS":
		return nil
	case "ADD":
	default:
		return fmt.Errorf("unknown CNI_COMMAND %q", os.Getenv("CNI_COMMAND"))
	}
	raw, err := io.ReadAll(io.LimitReader(os.Stdin, maxInput+1))
	if err != nil || len(raw) > maxInput {
		return fmt.Errorf("read netconf: %v (at most %d bytes)", err, maxInput)
	}
	var conf netConf
	if err := json.Unmarshal(raw, &conf); err != nil {
		return fmt.Errorf("parse netconf: %w", err)
	}
	if conf.CNIVersion != "" {
		*version = conf.CNIVersion
	}
	args := cniArgs(os.Getenv("CNI_ARGS"))
	namespace, name := args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"]
	if namespace == "" || name == "" || excluded(namespace, conf) {
		return printPrevResult(conf)
	}
	p, err := getPod(conf, namespace, name)
	if err != nil {
		return err
	}
	if redirect(p) {
		if err := apply(conf); err != nil {
			return err
		}
	}
	return printPrevResult(conf)
}

func cniArgs(raw string) map[string]string {
	out := map[string]string{}
	for _, item := range strings.Split(raw, ";") {
		if k, v, ok := strings.Cut(item, "="); ok {
			out[k] = v
		}
	}
	return out
}

func excluded(namespace string, conf netConf) bool {
	for _, list := range [][]string{conf.ExcludeNamespaces, conf.Kubernetes.ExcludeNamespaces} {
		for _, ns := range list {
			if ns == namespace {
				return true
			}
		}
	}
	return false
}

func getPod(conf netConf, namespace, name string) (*pod, error) {
	path := conf.Kubernetes.Kubeconfig
	if path == "" {
		dir := conf.RunDir
		if dir == "" {
			dir = "/var/run/istio-cni"
		}
		path = filepath.Join(dir, "istio-cni-kubeconfig")
	}
	server, ca, token, err := loadKubeconfig(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if ca != nil && !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kubeconfig %s: no certificate in certificate-authority-data", path)
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		},
	}
	u := strings.TrimRight(server, "/") + "/api/v1/namespaces/" + url.PathEscape(namespace) +
		"/pods/" + url.PathEscape(name)
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get pod %s/%s: HTTP %d", namespace, name, resp.StatusCode)
	}
	var p pod
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return &p, nil
}

func loadKubeconfig(path string) (server string, ca []byte, token string, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := json.Unmarshal(raw, &kc); err != nil {
		return "", nil, "", fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	var clusterName, userName string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName = c.Context.Cluster, c.Context.User
		}
	}
	for _, c := range kc.Clusters {
		if c.Name == clusterName {
			server = c.Cluster.Server
			if c.Cluster.CAData != "" {
				if ca, err = base64.StdEncoding.DecodeString(c.Cluster.CAData); err != nil {
					return "", nil, "", fmt.Errorf("kubeconfig %s: certificate-authority-data: %w", path, err)
				}
			}
		}
	}
	for _, u := range kc.Users {
		if u.Name == userName {
			token = u.User.Token
		}
	}
	if server == "" {
		return "", nil, "", fmt.Errorf("kubeconfig %s: no server for context %q", path, kc.CurrentContext)
	}
	return server, ca, token, nil
}

func redirect(p *pod) bool {
	if _, ok := p.Metadata.Annotations["sidecar.istio.io/status"]; !ok {
		return false
	}
	for _, c := range p.Spec.InitContainers {
		if c.Name == "istio-init" {
			return false
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name == "istio-proxy" {
			return true
		}
	}
	return false
}

func apply(conf netConf) error {
	y := conf.Yardstick
	if len(y.Apply) == 0 || y.PayloadFile == "" {
		return errors.New("netconf: yardstick.apply and yardstick.payload_file are required")
	}
	payload, err := os.ReadFile(y.PayloadFile)
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	netns := os.Getenv("CNI_NETNS")
	fd, err := syscall.Open(netns, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open CNI_NETNS %s: %w", netns, err)
	}
	defer syscall.Close(fd)
	if _, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0); errno != 0 {
		return fmt.Errorf("setns %s: %w", netns, errno)
	}
	cmd := exec.Command(y.Apply[0], y.Apply[1:]...)
	cmd.Stdin = bytes.NewReader(payload)
	cmd.Env = append(os.Environ(), y.Env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s in %s: %v: %s", strings.Join(y.Apply, " "), netns, err,
			strings.TrimSpace(string(out)))
	}
	return nil
}

func printPrevResult(conf netConf) error {
	result := map[string]any{}
	if len(conf.PrevResult) > 0 {
		if err := json.Unmarshal(conf.PrevResult, &result); err != nil {
			return fmt.Errorf("prevResult: %w", err)
		}
	}
	result["cniVersion"] = conf.CNIVersion
	out, err := json.Marshal(result)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}
