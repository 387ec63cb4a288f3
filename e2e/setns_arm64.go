//go:build linux

package e2e

import "syscall"

const sysSetns = syscall.SYS_SETNS
