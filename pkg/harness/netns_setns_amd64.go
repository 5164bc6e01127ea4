package harness

// sysSetns is setns(2)'s number, which package syscall does not define on amd64.
const sysSetns = 308
