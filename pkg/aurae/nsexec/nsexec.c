// The C half of nsexec: runs before the Go runtime starts (a constructor), so
// the process is still single-threaded and may join mount namespaces, which a
// multi-threaded Go process cannot. It only acts when auraed started this
// binary as a shim (_AURAE_NSEXEC is set); then it never returns: it waits for
// auraed's go-ahead (sent after the process was put in its cgroups), joins and
// unshares namespaces, drops to the requested credentials and execs the
// command. Failures are written to the error pipe, which exec closes.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define CONFIG_FD 3
#define ERROR_FD 4
#define MAX_NS 16

static void fail(const char *what, const char *arg) {
	int saved = errno;
	dprintf(ERROR_FD, "%s %s: %s", what, arg ? arg : "", strerror(saved));
	_exit(127);
}

static char *read_all(int fd, size_t *len) {
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		fail("malloc", NULL);
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				fail("realloc", NULL);
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fail("read config", NULL);
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	*len = n;
	return buf;
}

__attribute__((constructor)) static void aurae_nsexec(void) {
	if (!getenv("_AURAE_NSEXEC"))
		return;
	unsetenv("_AURAE_NSEXEC");
	if (fcntl(ERROR_FD, F_SETFD, FD_CLOEXEC) < 0)
		_exit(126);

	size_t len;
	char *cfg = read_all(CONFIG_FD, &len);
	close(CONFIG_FD);
	if (len == 0)
		_exit(126); // auraed gave up on this process before the go-ahead

	// The config is a sequence of NUL-terminated key, value pairs.
	int nsfds[MAX_NS], nns = 0;
	unsigned long unshare_flags = 0;
	char *path = NULL, *dir = NULL;
	long uid = -1, gid = -1;
	size_t nargs = 0;
	char **argv = calloc(len / 2 + 2, sizeof(char *));
	if (!argv)
		fail("calloc", NULL);
	char *p = cfg, *end = cfg + len;
	while (p < end) {
		char *key = p;
		p += strlen(p) + 1;
		if (p >= end)
			break;
		char *val = p;
		p += strlen(p) + 1;
		if (!strcmp(key, "join")) {
			if (nns == MAX_NS) {
				errno = E2BIG;
				fail("join", val);
			}
			// Open every namespace before joining any: joining the
			// mount namespace changes what /proc paths mean.
			int fd = open(val, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				fail("open", val);
			nsfds[nns++] = fd;
		} else if (!strcmp(key, "unshare")) {
			unshare_flags = strtoul(val, NULL, 10);
		} else if (!strcmp(key, "uid")) {
			uid = strtol(val, NULL, 10);
		} else if (!strcmp(key, "gid")) {
			gid = strtol(val, NULL, 10);
		} else if (!strcmp(key, "dir")) {
			dir = val;
		} else if (!strcmp(key, "path")) {
			path = val;
		} else if (!strcmp(key, "arg")) {
			argv[nargs++] = val;
		}
	}
	argv[nargs] = NULL;
	if (!path || nargs == 0) {
		errno = EINVAL;
		fail("config", "no path or arguments");
	}
	for (int i = 0; i < nns; i++) {
		if (setns(nsfds[i], 0) < 0)
			fail("setns", NULL);
		close(nsfds[i]);
	}
	if (unshare_flags && unshare((int)unshare_flags) < 0)
		fail("unshare", NULL);
	if (chdir(dir ? dir : "/") < 0)
		fail("chdir", dir);
	if (gid >= 0) {
		if (setgroups(0, NULL) < 0)
			fail("setgroups", NULL);
		if (setgid((gid_t)gid) < 0)
			fail("setgid", NULL);
	}
	if (uid >= 0 && setuid((uid_t)uid) < 0)
		fail("setuid", NULL);
	execve(path, argv, environ);
	fail("exec", path);
}
