//go:build unix

package local

import "syscall"

func umask(mask int) int { return syscall.Umask(mask) }
