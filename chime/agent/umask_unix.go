//go:build unix

package agent

import "syscall"

func umask(mask int) int { return syscall.Umask(mask) }
