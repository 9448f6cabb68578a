package lab

// sysSetns is setns(2).
const sysSetns = 268
