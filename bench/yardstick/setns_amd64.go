package main

// sysSetns is setns(2)'s number on x86-64 (the standard library's syscall package has none).
const sysSetns = 308
