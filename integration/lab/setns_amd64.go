package lab

// sysSetns is setns(2); the syscall package lacks it on amd64.
const sysSetns = 308
