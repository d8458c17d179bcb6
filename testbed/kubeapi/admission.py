"""ValidatingAdmissionPolicies in the API stand-in: the shipped policy's CEL, evaluated.

kube-apiserver evaluates a policy's CEL with cel-go; here `cel-python` (a dev/test dependency:
the only maintained CEL implementation for Python) evaluates the same expressions over the
same variables: `object`, `oldObject`, `request` (operation, subResource, name, dryRun,
userInfo with its `extra`), and `variables`, each defined in order and visible to the next.
A policy applies through a binding with `validationActions: [Deny]`, to the operations and
resources of its `matchConstraints.resourceRules`, when every `matchConditions` expression is
true; the first validation that is false denies the request with the API server's 403 and
message. An expression that cannot be evaluated is a failure (`failurePolicy: Fail`, the
default). Only what the shipped policy uses is supported: no params, no auditAnnotations,
no CEL optional syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.kubeapi.store import ApiError


@dataclass(frozen=True)
class AdmissionRequest:
    """One write as admission sees it."""

    operation: str
    """CREATE, UPDATE, DELETE (a PATCH is an UPDATE)."""
    group: str
    resource: str
    subresource: str
    name: str
    namespace: str
    user_info: dict[str, Any]
    dry_run: bool = False

    def as_cel(self) -> dict[str, Any]:
        return {"operation": self.operation, "subResource": self.subresource,
                "name": self.name, "namespace": self.namespace, "dryRun": self.dry_run,
                "resource": {"group": self.group, "version": "v1", "resource": self.resource},
                "userInfo": self.user_info}


class Policy:
    """One ValidatingAdmissionPolicy and the name of the binding that puts it in force."""

    def __init__(self, policy: dict[str, Any], binding: str) -> None:
        import celpy  # here: only tests that load a policy need cel-python

        self.name = policy["metadata"]["name"]
        self.binding = binding
        self.spec = policy["spec"]
        env = celpy.Environment()
        self._celpy = celpy

        def compile_(expr: str) -> Any:
            return env.program(env.compile(expr))

        self._variables = [(v["name"], compile_(v["expression"]))
                           for v in self.spec.get("variables") or []]
        self._conditions = [compile_(c["expression"])
                            for c in self.spec.get("matchConditions") or []]
        self._validations = [(compile_(v["expression"]), v.get("message") or v["expression"])
                             for v in self.spec["validations"]]

    def matches(self, request: AdmissionRequest) -> bool:
        resource = (f"{request.resource}/{request.subresource}" if request.subresource
                    else request.resource)
        for rule in (self.spec.get("matchConstraints") or {}).get("resourceRules") or []:
            if (request.group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", [])) \
                    and (request.operation in rule.get("operations", [])
                         or "*" in rule.get("operations", [])) \
                    and (resource in rule.get("resources", [])
                         or "*" in rule.get("resources", [])):
                return True
        return False

    def denial(self, request: AdmissionRequest, obj: dict[str, Any] | None,
               old: dict[str, Any] | None) -> str | None:
        """The message this policy denies the request with, or None when it admits it."""
        celpy = self._celpy
        activation: dict[str, Any] = {
            "request": celpy.json_to_cel(request.as_cel()),
            "object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old)}
        try:
            for expr in self._conditions:
                if not _true(expr.evaluate(activation)):
                    return None
            variables: dict[str, Any] = {}
            for name, expr in self._variables:
                activation["variables"] = celpy.celtypes.MapType(
                    {celpy.celtypes.StringType(k): v for k, v in variables.items()})
                variables[name] = expr.evaluate(activation)
            activation["variables"] = celpy.celtypes.MapType(
                {celpy.celtypes.StringType(k): v for k, v in variables.items()})
            for expr, message in self._validations:
                if not _true(expr.evaluate(activation)):
                    return message
        except Exception as exc:  # noqa: BLE001 - failurePolicy: Fail
            return f"expression could not be evaluated: {exc}"
        return None


def _true(value: Any) -> bool:
    if isinstance(value, Exception):  # cel-python returns evaluation errors as values
        raise value
    return value is True or (type(value).__name__ == "BoolType" and bool(value))


class Admission:
    """The policies in force (`load` from manifest documents) and their verdicts."""

    def __init__(self) -> None:
        self.policies: list[Policy] = []

    def load(self, docs: list[dict[str, Any]]) -> None:
        """Every ValidatingAdmissionPolicy among `docs` that a Deny binding there puts in
        force."""
        policies = {d["metadata"]["name"]: d for d in docs
                    if d.get("kind") == "ValidatingAdmissionPolicy"}
        for binding in (d for d in docs if d.get("kind") == "ValidatingAdmissionPolicyBinding"):
            spec = binding["spec"]
            if "Deny" in spec.get("validationActions", []) and spec["policyName"] in policies:
                self.policies.append(Policy(policies[spec["policyName"]],
                                            binding["metadata"]["name"]))

    def validate(self, request: AdmissionRequest, obj: dict[str, Any] | None,
                 old: dict[str, Any] | None) -> None:
        """Raise the API server's 403 when a policy in force denies the request."""
        for policy in self.policies:
            if not policy.matches(request):
                continue
            message = policy.denial(request, obj, old)
            if message is not None:
                raise ApiError(403, f"{request.resource} \"{request.name}\" is forbidden: "
                                    f"ValidatingAdmissionPolicy '{policy.name}' with binding "
                                    f"'{policy.binding}' denied request: {message}")
