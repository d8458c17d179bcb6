package main

// sysSetns is setns(2)'s number on arm64 (the standard library's syscall package has none).
const sysSetns = 268
