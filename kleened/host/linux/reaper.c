/*
 * kleened-reaper: the one compiled helper behind Linux jails.
 *
 *   kleened-reaper start --sync-fd N --root DIR --hostname NAME --net host|new|disabled
 *                        --user USER [--tty] [--no-dev] [--go-fd N] [--exit-fd N] -- CMD...
 *       The calling process becomes the jail's *monitor*: it creates pid, mount,
 *       uts, ipc (and for new/disabled, net) namespaces for a child that runs as
 *       pid 1 in them (the *reaper*), relays the jail's output to its own stdout
 *       and exits with pid 1's status.  The reaper confines itself to DIR, sets
 *       up /proc and a private /dev, starts CMD as USER and lives until no other
 *       process is left in the jail (FreeBSD jail lifetime), forwarding
 *       SIGTERM/SIGINT/SIGHUP to every process in it.
 *       With --exit-fd, the end of CMD itself is reported as jail(8) reports
 *       it, even while processes CMD left in the background keep the jail up:
 *       once CMD's output has settled, the monitor writes CMD's status ("N\n")
 *       to that fd, closes it and its own stdout and stderr, and stays with
 *       the jail (still reaping pid 1) until the jail is empty.
 *
 *   kleened-reaper exec --sync-fd N --pid PID1 --starttime T --user USER
 *                       [--workdir DIR] [--tty] -- CMD...
 *       Enters the namespaces and root of the jail whose pid 1 is PID1 (guarded
 *       against pid reuse by its start time) and runs CMD there as USER; the
 *       helper stays outside, forwards signals and exits with CMD's status.
 *
 *   kleened-reaper hostname --pid PID1 --starttime T NAME
 *       Sets the hostname of a running jail.
 *
 * The jail's environment (NAME=value entries applied over a clean login
 * environment) comes in our own environment as KLEENED_JAIL_ENV_<n>=NAME=value,
 * in order; --env NAME=value adds entries by hand.
 *
 * The daemon reads --sync-fd (a pipe) until EOF.  Lines on it:
 *   P<pid>   host pid of the jail's pid 1 (start)
 *   S        set-up done; waiting for one byte on --go-fd (start, with --go-fd)
 *   E<text>  set-up failed; the helper exits 125
 * EOF without an E means the command has been exec'd.  A command that cannot
 * be exec'd is reported in the output and exits 127/126, as env(1) does.
 *
 * Users are looked up in the jail's own /etc/passwd and /etc/group after
 * entering its root, so nothing in the container's files is read on the host.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>

#define DEFAULT_PATH "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
#define SETUP_FAILED 125
#define ENV_PREFIX "KLEENED_JAIL_ENV_"
#define MAX_GROUPS 256
#define MAX_ENV 4096
/* After the command ends, output still arriving is relayed until EOF or until
 * the stream has been idle this long (a pty may deliver its tail late). */
#define LINGER_IDLE_MS 100
#define LINGER_MAX_MS 2000

struct opts {
    const char *mode;
    const char *root;
    const char *hostname;
    const char *net;
    const char *user;
    const char *workdir;
    int tty;
    int nodev;
    int sync_fd;
    int go_fd;
    int exit_fd;
    pid_t pid;
    unsigned long long starttime;
    char *env[MAX_ENV];
    int nenv;
    char **cmd;
};

struct user {
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    char name[256];
    char home[PATH_MAX];
    char shell[PATH_MAX];
};

static int sync_fd = -1;

/* ------------------------------------------------------------------ small utilities */

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void report(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    if (sync_fd >= 0)
        write_all(sync_fd, buf, (size_t)n);
}

/* A set-up failure: tell the daemon (or stderr when nobody listens) and exit. */
__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    if (sync_fd >= 0)
        report("E%s", msg);
    else
        dprintf(2, "kleened-reaper: %s\n", msg);
    _exit(SETUP_FAILED);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned long long proc_starttime(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 (state) */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

static int valid_fd(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

/* Every fd above stderr closes at exec: the command gets 0, 1 and 2 only. */
static void cloexec_from(int lowest)
{
    if (syscall(SYS_close_range, (unsigned)lowest, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) == 0)
        return;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (fd >= lowest && fd != self)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    closedir(d);
}

/* ------------------------------------------------------------------ fd passing */

static void send_fd(int sock, int fd)
{
    char byte = 'T';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

/* The pty master sent by the process that opened it in the jail, or -1. */
static int recv_fd(int sock)
{
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    ssize_t n;
    while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (n <= 0)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

/* ------------------------------------------------------------------ users */

static int is_number(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

/* Split a colon-separated line in place into at most `max` fields. */
static int split_fields(char *line, char **fields, int max)
{
    int n = 0;
    line[strcspn(line, "\r\n")] = '\0';
    while (n < max) {
        fields[n++] = line;
        char *colon = strchr(line, ':');
        if (!colon)
            break;
        *colon = '\0';
        line = colon + 1;
    }
    return n;
}

static void add_group(struct user *u, gid_t gid)
{
    for (int i = 0; i < u->ngroups; i++)
        if (u->groups[i] == gid)
            return;
    if (u->ngroups < MAX_GROUPS)
        u->groups[u->ngroups++] = gid;
}

/* Look `spec` (a name, or a numeric uid) up in the jail's /etc/passwd; the
 * supplementary groups are the jail's /etc/group entries that list the name. */
static void lookup_user(const char *spec, struct user *u)
{
    int found = 0;
    char *line = NULL;
    size_t cap = 0;
    FILE *f = fopen("/etc/passwd", "re");
    memset(u, 0, sizeof *u);
    if (f) {
        while (getline(&line, &cap, f) > 0) {
            char *fld[7];
            if (line[0] == '#' || split_fields(line, fld, 7) < 7)
                continue;
            int match = strcmp(fld[0], spec) == 0 ||
                        (is_number(spec) && is_number(fld[2]) && strcmp(fld[2], spec) == 0);
            if (!match || !is_number(fld[2]) || !is_number(fld[3]))
                continue;
            u->uid = (uid_t)strtoul(fld[2], NULL, 10);
            u->gid = (gid_t)strtoul(fld[3], NULL, 10);
            snprintf(u->name, sizeof u->name, "%s", fld[0]);
            snprintf(u->home, sizeof u->home, "%s", fld[5][0] ? fld[5] : "/");
            snprintf(u->shell, sizeof u->shell, "%s", fld[6][0] ? fld[6] : "/bin/sh");
            found = 1;
            break;
        }
        fclose(f);
    }
    if (!found) {
        if (strcmp(spec, "root") == 0) {
            /* images without a user database still run as root */
            snprintf(u->name, sizeof u->name, "root");
            snprintf(u->home, sizeof u->home, "/root");
            snprintf(u->shell, sizeof u->shell, "/bin/sh");
        } else if (is_number(spec)) {
            u->uid = (uid_t)strtoul(spec, NULL, 10);
            snprintf(u->name, sizeof u->name, "%s", spec);
            snprintf(u->home, sizeof u->home, "/");
            snprintf(u->shell, sizeof u->shell, "/bin/sh");
        } else {
            free(line);
            fail("no such user '%s' in the jail's /etc/passwd", spec);
        }
    }
    add_group(u, u->gid);
    f = fopen("/etc/group", "re");
    if (f) {
        while (getline(&line, &cap, f) > 0) {
            char *fld[4];
            if (line[0] == '#' || split_fields(line, fld, 4) < 4 || !is_number(fld[2]))
                continue;
            for (char *m = strtok(fld[3], ","); m; m = strtok(NULL, ","))
                if (strcmp(m, u->name) == 0)
                    add_group(u, (gid_t)strtoul(fld[2], NULL, 10));
        }
        fclose(f);
    }
    free(line);
}

/* ------------------------------------------------------------------ environment */

static void env_set(char **env, int *n, const char *entry)
{
    size_t klen = strcspn(entry, "=");
    for (int i = 0; i < *n; i++) {
        if (strncmp(env[i], entry, klen) == 0 && env[i][klen] == '=') {
            env[i] = (char *)entry;
            return;
        }
    }
    if (*n < MAX_ENV + 7)
        env[(*n)++] = (char *)entry;
}

/* exec.clean: a login environment of the jail's user, then the spec's entries. */
static char **clean_env(const struct opts *o, const struct user *u)
{
    static char *env[MAX_ENV + 8];
    static char home[PATH_MAX + 8], shell[PATH_MAX + 8], user[300];
    int n = 0;
    snprintf(home, sizeof home, "HOME=%s", u->home);
    snprintf(shell, sizeof shell, "SHELL=%s", u->shell);
    snprintf(user, sizeof user, "USER=%s", u->name);
    env_set(env, &n, home);
    env_set(env, &n, shell);
    env_set(env, &n, user);
    env_set(env, &n, "PATH=" DEFAULT_PATH);
    if (o->tty)
        env_set(env, &n, "TERM=xterm");
    for (int i = 0; i < o->nenv; i++)
        env_set(env, &n, o->env[i]);
    env[n] = NULL;
    return env;
}

static const char *env_get(char **env, const char *name)
{
    size_t len = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
            return *env + len + 1;
    return NULL;
}

/* ------------------------------------------------------------------ running the command */

static void try_exec(const char *path, char **argv, char **envp)
{
    execve(path, argv, envp);
    if (errno == ENOEXEC) { /* a script without #!: run it with sh, as execvp does */
        int argc = 0;
        while (argv[argc])
            argc++;
        char **shargv = calloc((size_t)argc + 2, sizeof(char *));
        if (!shargv)
            return;
        shargv[0] = "sh";
        shargv[1] = (char *)path;
        for (int i = 1; i < argc; i++)
            shargv[i + 1] = argv[i];
        execve("/bin/sh", shargv, envp);
        free(shargv);
        errno = ENOEXEC;
    }
}

/* execvpe with the PATH of the new environment (glibc's uses the caller's). */
__attribute__((noreturn)) static void exec_command(char **argv, char **envp)
{
    const char *file = argv[0];
    int err = ENOENT;
    if (strchr(file, '/')) {
        try_exec(file, argv, envp);
        err = errno;
    } else if (*file) {
        const char *path = env_get(envp, "PATH");
        int eacces = 0;
        if (!path)
            path = DEFAULT_PATH;
        for (const char *p = path;; p++) {
            const char *end = strchrnul(p, ':');
            char buf[PATH_MAX];
            int dirlen = (int)(end - p);
            snprintf(buf, sizeof buf, "%.*s/%s", dirlen ? dirlen : 1, dirlen ? p : ".", file);
            try_exec(buf, argv, envp);
            if (errno == EACCES) {
                eacces = 1;
            } else if (errno != ENOENT && errno != ENOTDIR) {
                err = errno;
                break;
            }
            if (!*end) {
                err = eacces ? EACCES : ENOENT;
                break;
            }
            p = end;
        }
    }
    dprintf(2, "kleened: %s: %s\n", file, strerror(err));
    _exit(err == ENOENT ? 127 : 126);
}

/* A jail's root keeps the capabilities a FreeBSD jail's root has, roughly
 * Docker's default set: no mount, no mknod, no raw devices, no module or
 * clock or kernel-parameter changes, so it cannot reach the host from inside. */
static void drop_capabilities(void)
{
    static const int keep[] = {
        CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FOWNER,           CAP_FSETID,     CAP_KILL,
        CAP_SETGID, CAP_SETUID,       CAP_SETPCAP,          CAP_NET_BIND_SERVICE,
        CAP_NET_RAW, CAP_SYS_CHROOT,  CAP_AUDIT_WRITE,      CAP_SETFCAP,
    };
    for (int cap = 0; cap < 64; cap++) {
        int kept = 0;
        for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
            if (keep[i] == cap)
                kept = 1;
        if (!kept && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno == EINVAL)
            break; /* past the kernel's last capability */
    }
}

/* Runs in the freshly forked command process, already inside the jail. */
__attribute__((noreturn)) static void run_command(const struct opts *o, const struct user *u,
                                                  int slave, const char *cwd, int exec_mode)
{
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (slave >= 0) {
        if (ioctl(slave, TIOCSCTTY, 0) < 0)
            fail("cannot make the pty the controlling terminal: %s", strerror(errno));
        for (int fd = 0; fd < 3; fd++)
            dup2(slave, fd);
        if (slave > 2)
            close(slave);
    }
    drop_capabilities();
    if (setgroups((size_t)u->ngroups, u->groups) < 0 || setgid(u->gid) < 0 || setuid(u->uid) < 0)
        fail("cannot switch to user '%s': %s", u->name, strerror(errno));
    if (chdir(cwd) < 0)
        fail("cannot change to directory '%s': %s", cwd, strerror(errno));
    umask(022);
    char **envp = clean_env(o, u);
    if (exec_mode) {
        /* The helper outside is our parent: if it is SIGKILLed (a forced exec
         * stop), so are we, as a jexec'd command would be.  Set after setuid,
         * which clears it; getppid() is 0 while that parent lives. */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != 0)
            _exit(SETUP_FAILED);
    }
    cloexec_from(3);
    exec_command(o->cmd, envp);
}

static const char *home_or_root(const struct user *u)
{
    struct stat st;
    return stat(u->home, &st) == 0 && S_ISDIR(st.st_mode) ? u->home : "/";
}

/* Open a pty from the jail's own devpts; return the master, store the slave. */
static int open_pty(int *slave)
{
    int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        fail("cannot allocate a pty in the jail: %s", strerror(errno));
    int unlock = 0, index = -1;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &index) < 0)
        fail("cannot set up the jail's pty: %s", strerror(errno));
    int s = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) {
        char path[64];
        snprintf(path, sizeof path, "/dev/pts/%d", index);
        s = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    }
    if (s < 0)
        fail("cannot open the jail's pty: %s", strerror(errno));
    /* As kleened_pty does: no \n -> \r\n on output, byte-at-a-time reads. */
    struct termios t;
    if (tcgetattr(s, &t) == 0) {
        t.c_oflag &= (tcflag_t)~ONLCR;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        tcsetattr(s, TCSANOW, &t);
    }
    *slave = s;
    return master;
}

/* ------------------------------------------------------------------ relay (monitor, exec) */

enum { MONITOR, EXEC, DETACHED };

/* The monitor's view of the first command (--exit-fd): pid 1 writes its status
 * to status_fd; once the output settles it goes on to the daemon's exit_fd. */
struct first {
    int status_fd;
    int exit_fd;
    int code;
    int done;
};

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* The first command has ended: tell the daemon, then stop talking to it.  The
 * jail's later output (daemons the command left running) is read and dropped,
 * as jail(8)'s caller no longer reads it either. */
static void report_first(struct first *f)
{
    dprintf(f->exit_fd, "%d\n", f->code);
    close_fd(&f->exit_fd);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, 1);
        dup2(devnull, 2);
        close(devnull);
    }
}

static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 1;
}

/*
 * Copy out_src to stdout and (tty) stdin to in_dst, until the child is gone
 * and its output has ended.  stdout is the daemon's pipe: when the daemon
 * goes away (a restart) the output is dropped, so the jail is not killed by
 * SIGPIPE.  Returns the child's exit code.
 */
static int relay(int role, pid_t child, int sigfd, int out_src, int in_src, int in_dst,
                 struct first *first)
{
    static char obuf[65536];
    char ibuf[4096];
    size_t ilen = 0, ioff = 0;
    int out_dead = 0, code = 1, child_done = child <= 0;
    long long idle_deadline = 0, hard_deadline = 0;

    if (in_dst >= 0)
        fcntl(in_dst, F_SETFL, fcntl(in_dst, F_GETFL) | O_NONBLOCK);
    for (;;) {
        if (child_done && out_src < 0)
            break;
        struct pollfd p[5];
        int n = 0, i_sig = -1, i_out = -1, i_in = -1, i_dst = -1, i_first = -1;
        if (first->status_fd >= 0) {
            p[n] = (struct pollfd){.fd = first->status_fd, .events = POLLIN};
            i_first = n++;
        }
        if (sigfd >= 0) {
            p[n] = (struct pollfd){.fd = sigfd, .events = POLLIN};
            i_sig = n++;
        }
        if (out_src >= 0) {
            p[n] = (struct pollfd){.fd = out_src, .events = POLLIN};
            i_out = n++;
        }
        if (in_dst >= 0 && ioff < ilen) {
            p[n] = (struct pollfd){.fd = in_dst, .events = POLLOUT};
            i_dst = n++;
        } else if (in_dst >= 0 && in_src >= 0) {
            p[n] = (struct pollfd){.fd = in_src, .events = POLLIN};
            i_in = n++;
        }
        int timeout = -1;
        int ending = child_done && role != DETACHED;
        if (ending || (first->done && first->exit_fd >= 0)) {
            long long now = now_ms(), until = idle_deadline < hard_deadline ? idle_deadline
                                                                              : hard_deadline;
            if (now >= until && ending)
                break;
            if (now >= until) {
                report_first(first);
                out_dead = 1;
                continue;
            }
            timeout = (int)(until - now);
        }
        if (poll(p, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (i_first >= 0 && p[i_first].revents) {
            char buf[32];
            ssize_t r = read(first->status_fd, buf, sizeof buf - 1);
            if (r > 0) {
                buf[r] = '\0';
                first->code = atoi(buf);
                first->done = 1;
                idle_deadline = now_ms() + LINGER_IDLE_MS;
                hard_deadline = now_ms() + LINGER_MAX_MS;
            }
            if (r >= 0 || (errno != EAGAIN && errno != EINTR))
                close_fd(&first->status_fd);
        }
        if (i_sig >= 0 && (p[i_sig].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) == sizeof si) {
                int sig = (int)si.ssi_signo;
                if (sig == SIGCHLD) {
                    int st;
                    if (child > 0 && !child_done && waitpid(child, &st, WNOHANG) == child) {
                        code = status_code(st);
                        child_done = 1;
                        idle_deadline = now_ms() + LINGER_IDLE_MS;
                        hard_deadline = now_ms() + LINGER_MAX_MS;
                    }
                } else if (role == EXEC && !child_done) {
                    kill(child, sig);
                } else if (role == MONITOR && !child_done) {
                    /* Like killing jail(8): the host-side child ends with 128+sig
                     * but the jail lives on; a copy of us keeps relaying its output. */
                    pid_t d = fork();
                    if (d != 0)
                        _exit(128 + sig);
                    role = DETACHED;
                    child = -1;
                    child_done = 1;
                    /* the exited copy has answered for the first command */
                    close_fd(&first->status_fd);
                    close_fd(&first->exit_fd);
                }
            }
        }
        if (i_out >= 0 && p[i_out].revents) {
            ssize_t r = read(out_src, obuf, sizeof obuf);
            if (r > 0) {
                if (!out_dead) {
                    const char *b = obuf;
                    size_t left = (size_t)r;
                    while (left > 0) {
                        ssize_t w = write(1, b, left);
                        if (w < 0 && errno == EINTR)
                            continue;
                        if (w < 0) {
                            out_dead = 1; /* EPIPE: nobody listens any more */
                            break;
                        }
                        b += w;
                        left -= (size_t)w;
                    }
                }
                idle_deadline = now_ms() + LINGER_IDLE_MS;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* EOF, or EIO from a pty master once every slave is closed.  The
                 * master stays open until we exit: closing it would hang the
                 * terminal up, and a command that closed its fds just before
                 * exiting would die of SIGHUP instead of reporting its status. */
                if (out_src == in_dst)
                    in_dst = -1;
                else
                    close(out_src);
                out_src = -1;
            }
        }
        if (i_in >= 0 && p[i_in].revents) {
            ssize_t r = read(in_src, ibuf, sizeof ibuf);
            if (r > 0) {
                ilen = (size_t)r;
                ioff = 0;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(in_src);
                in_src = -1;
                ibuf[0] = 4; /* stdin closed: the terminal's EOF character (^D) */
                ilen = 1;
                ioff = 0;
            }
        }
        if (i_dst >= 0 && p[i_dst].revents) {
            ssize_t w = write(in_dst, ibuf + ioff, ilen - ioff);
            if (w > 0)
                ioff += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                ilen = ioff = 0;
        }
    }
    return code;
}

static int signal_fd(const int *sigs, int n)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0)
        fail("signalfd: %s", strerror(errno));
    return fd;
}

/* ------------------------------------------------------------------ jail set-up (pid 1) */

static void mount_or_fail(const char *src, const char *target, const char *type,
                          unsigned long flags, const char *data)
{
    if (mount(src, target, type, flags, data) < 0)
        fail("cannot mount %s on /%s in the jail: %s", type ? type : src, target, strerror(errno));
}

static void ensure_dir(const char *path, mode_t mode)
{
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            fail("'/%s' in the jail is not a directory", path);
        return;
    }
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        fail("cannot create '/%s' in the jail: %s", path, strerror(errno));
}

/* Read-only views of the parts of /proc that reach the host kernel. */
static void protect_proc(void)
{
    static const char *paths[] = {"proc/sys", "proc/sysrq-trigger", "proc/irq", "proc/bus",
                                  "proc/fs"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (access(paths[i], F_OK) < 0)
            continue;
        if (mount(paths[i], paths[i], NULL, MS_BIND | MS_REC, NULL) == 0)
            mount(NULL, paths[i], NULL,
                  MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
}

/* A private /dev: tmpfs with the usual nodes, and a devpts of the jail's own. */
static void setup_dev(void)
{
    static const struct {
        const char *name;
        unsigned maj, min;
    } nodes[] = {{"dev/null", 1, 3},   {"dev/zero", 1, 5},    {"dev/full", 1, 7},
                 {"dev/random", 1, 8}, {"dev/urandom", 1, 9}, {"dev/tty", 5, 0}};
    static const char *links[][2] = {{"pts/ptmx", "dev/ptmx"},
                                     {"/proc/self/fd", "dev/fd"},
                                     {"/proc/self/fd/0", "dev/stdin"},
                                     {"/proc/self/fd/1", "dev/stdout"},
                                     {"/proc/self/fd/2", "dev/stderr"}};
    ensure_dir("dev", 0755);
    mount_or_fail("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k");
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0 ||
            chmod(nodes[i].name, 0666) < 0)
            fail("cannot create /%s: %s", nodes[i].name, strerror(errno));
    }
    ensure_dir("dev/pts", 0755);
    ensure_dir("dev/shm", 01777);
    chmod("dev/shm", 01777);
    mount_or_fail("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=620,gid=5");
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0)
            fail("cannot create /%s: %s", links[i][1], strerror(errno));
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        fail("cannot find the jail's loopback interface: %s", strerror(errno));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        fail("cannot bring up the jail's loopback interface: %s", strerror(errno));
    close(s);
}

/* True while any process other than us is left in the jail's pid namespace. */
static int others_alive(void)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL)
        found = is_number(e->d_name) && strcmp(e->d_name, "1") != 0;
    closedir(d);
    return found;
}

static void noop_handler(int sig)
{
    (void)sig;
}

/* pid 1: reap everything, forward stop signals, leave when the jail is empty.
 * The first command's status also goes to `main_fd` (the monitor) at once. */
__attribute__((noreturn)) static void reap_forever(pid_t main_pid, int main_fd)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    int main_code = -1;
    for (;;) {
        int have_children = 0, st;
        for (;;) {
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p > 0) {
                if (p == main_pid) {
                    main_code = status_code(st);
                    if (main_fd >= 0) {
                        dprintf(main_fd, "%d\n", main_code);
                        close(main_fd);
                        main_fd = -1;
                    }
                }
                continue;
            }
            if (p == 0)
                have_children = 1;
            else if (errno == EINTR)
                continue;
            break;
        }
        /* Processes that entered with `exec` are not our children: without
         * children of our own, poll /proc for them. */
        if (main_code >= 0 && !have_children && !others_alive())
            _exit(main_code);
        siginfo_t info;
        struct timespec poll_interval = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
        int sig = have_children ? sigwaitinfo(&set, &info)
                                : sigtimedwait(&set, &info, &poll_interval);
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP)
            kill(-1, sig);
    }
}

__attribute__((noreturn)) static void jail_init(struct opts *o, int out_w, int pty_sock,
                                                 int main_fd)
{
    if (out_w >= 0) { /* the jail's output goes through the monitor's relay */
        dup2(out_w, 1);
        dup2(out_w, 2);
        close(out_w);
    }
    signal(SIGPIPE, SIG_IGN);
    /* Nothing we mount may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        fail("cannot make the jail's mounts private: %s", strerror(errno));
    if (mount(o->root, o->root, NULL, MS_BIND | MS_REC, NULL) < 0)
        fail("cannot bind the jail root '%s': %s", o->root, strerror(errno));
    if (chdir(o->root) < 0)
        fail("cannot enter the jail root '%s': %s", o->root, strerror(errno));
    ensure_dir("proc", 0555);
    mount_or_fail("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    protect_proc();
    if (!o->nodev)
        setup_dev();
    if (sethostname(o->hostname, strlen(o->hostname)) < 0)
        fail("cannot set the hostname '%s': %s", o->hostname, strerror(errno));
    if (strcmp(o->net, "host") != 0)
        loopback_up();
    /* Confine: pivot_root where possible (a chroot can be escaped by root). */
    if (syscall(SYS_pivot_root, ".", ".") == 0) {
        if (umount2(".", MNT_DETACH) < 0)
            fail("cannot detach the host's root: %s", strerror(errno));
    } else if (mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0) {
        fail("cannot change root to '%s': %s", o->root, strerror(errno));
    }
    if (chdir("/") < 0)
        fail("cannot enter the jail root: %s", strerror(errno));

    struct user u;
    lookup_user(o->user, &u);
    int slave = -1;
    if (o->tty) {
        int master = open_pty(&slave);
        send_fd(pty_sock, master);
        close(master);
    }
    if (pty_sock >= 0)
        close(pty_sock);
    if (o->go_fd >= 0) { /* the daemon's hook (network set-up) runs now */
        char go;
        report("S");
        ssize_t n;
        while ((n = read(o->go_fd, &go, 1)) < 0 && errno == EINTR)
            ;
        if (n != 1)
            fail("start aborted by the daemon");
        close(o->go_fd);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = noop_handler; /* pid 1 ignores default-action signals */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL); /* a blocked, handled SIGCHLD is always queued */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);

    pid_t main_pid = fork();
    if (main_pid < 0)
        fail("fork: %s", strerror(errno));
    if (main_pid == 0)
        run_command(o, &u, slave, home_or_root(&u), 0);
    if (slave >= 0)
        close(slave);
    close(sync_fd);
    sync_fd = -1;
    /* The standard fds stay with the command; ours would only keep a pty or a
     * pipe open (with a tty, the daemon's own pipe) after the command ends. */
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        for (int fd = 0; fd < 3; fd++)
            dup2(devnull, fd);
        close(devnull);
    }
    reap_forever(main_pid, main_fd);
}

static pid_t clone_into_namespaces(unsigned long flags)
{
    struct {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    } args;
    memset(&args, 0, sizeof args);
    args.flags = flags;
    args.exit_signal = SIGCHLD;
    /* clone3 without a stack is fork() into new namespaces; the monitor itself
     * stays in the host's, so it pins none of the jail's namespaces. */
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0 && errno == ENOSYS)
        pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    return (pid_t)pid;
}

static int run_start(struct opts *o)
{
    int out[2] = {-1, -1}, sock[2] = {-1, -1}, main_pipe[2] = {-1, -1};
    if (!o->root || !o->hostname || !o->net || !o->user)
        fail("start needs --root, --hostname, --net and --user");
    if (o->exit_fd >= 0 && pipe2(main_pipe, O_CLOEXEC) < 0)
        fail("cannot create the status channel: %s", strerror(errno));
    if (o->tty ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) < 0
               : pipe2(out, O_CLOEXEC) < 0)
        fail("cannot create the output channel: %s", strerror(errno));
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};
    int sigfd = signal_fd(sigs, 4);
    signal(SIGPIPE, SIG_IGN);

    unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
    if (strcmp(o->net, "host") != 0)
        flags |= CLONE_NEWNET;
    pid_t pid = clone_into_namespaces(flags);
    if (pid < 0)
        fail("cannot create the jail's namespaces: %s", strerror(errno));
    if (pid == 0) {
        close(sigfd);
        if (o->exit_fd >= 0) {
            close(main_pipe[0]);
            close(o->exit_fd);
        }
        if (o->tty)
            close(sock[0]);
        else
            close(out[0]);
        jail_init(o, out[1], sock[1], main_pipe[1]);
    }
    if (main_pipe[1] >= 0)
        close(main_pipe[1]);
    report("P%d", (int)pid);
    close(sync_fd);
    sync_fd = -1;
    if (o->go_fd >= 0)
        close(o->go_fd);
    int out_src, in_src = -1, in_dst = -1;
    if (o->tty) {
        close(sock[1]);
        out_src = recv_fd(sock[0]); /* -1 if pid 1 failed before opening the pty */
        close(sock[0]);
        if (out_src >= 0) {
            in_dst = out_src;
            in_src = 0;
        }
    } else {
        close(out[1]);
        out_src = out[0];
    }
    struct first first = {.status_fd = main_pipe[0], .exit_fd = o->exit_fd};
    return relay(MONITOR, pid, sigfd, out_src, in_src, in_dst, &first);
}

/* ------------------------------------------------------------------ entering a jail */

static int open_ns(pid_t pid, const char *what)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail("the jail is not running (%s: %s)", what, strerror(errno));
    return fd;
}

static void check_starttime(const struct opts *o)
{
    if (o->pid <= 0 || proc_starttime(o->pid) != o->starttime)
        fail("the jail is not running");
}

static int run_exec(struct opts *o)
{
    static const char *kinds[] = {"ns/ipc", "ns/uts", "ns/net", "ns/mnt"};
    static const int types[] = {CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNET, CLONE_NEWNS};
    int ns[4];
    if (!o->user)
        fail("exec needs --user");
    int pidns = open_ns(o->pid, "ns/pid");
    for (int i = 0; i < 4; i++)
        ns[i] = open_ns(o->pid, kinds[i]);
    int rootfd = open_ns(o->pid, "root");
    /* The fds were opened before this check, so they belong to that process. */
    check_starttime(o);
    if (setns(pidns, CLONE_NEWPID) < 0)
        fail("cannot enter the jail's pid namespace: %s", strerror(errno));
    close(pidns);

    int sock[2] = {-1, -1};
    if (o->tty && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) < 0)
        fail("socketpair: %s", strerror(errno));
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
                               SIGWINCH};
    int sigfd = signal_fd(sigs, 8);
    signal(SIGPIPE, SIG_IGN);

    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        close(sigfd);
        for (int i = 0; i < 4; i++) {
            if (setns(ns[i], types[i]) < 0)
                fail("cannot enter the jail (%s): %s", kinds[i], strerror(errno));
            close(ns[i]);
        }
        if (fchdir(rootfd) < 0 || chroot(".") < 0 || chdir("/") < 0)
            fail("cannot enter the jail's root: %s", strerror(errno));
        close(rootfd);
        struct user u;
        lookup_user(o->user, &u);
        const char *cwd = home_or_root(&u);
        if (o->workdir && *o->workdir) {
            struct stat st;
            if (stat(o->workdir, &st) < 0 || !S_ISDIR(st.st_mode))
                fail("working directory '%s' does not exist in the jail", o->workdir);
            cwd = o->workdir;
        }
        int slave = -1;
        if (o->tty) {
            close(sock[0]);
            int master = open_pty(&slave);
            send_fd(sock[1], master);
            close(master);
            close(sock[1]);
        }
        run_command(o, &u, slave, cwd, 1);
    }
    for (int i = 0; i < 4; i++)
        close(ns[i]);
    close(rootfd);
    close(sync_fd);
    sync_fd = -1;
    int master = -1;
    if (o->tty) {
        close(sock[1]);
        master = recv_fd(sock[0]);
        close(sock[0]);
    }
    /* Without a tty the command writes straight to our stdout: nothing to relay. */
    struct first none = {.status_fd = -1, .exit_fd = -1};
    return relay(EXEC, pid, sigfd, master, master >= 0 ? 0 : -1, master, &none);
}

static int run_hostname(struct opts *o, const char *name)
{
    int fd = open_ns(o->pid, "ns/uts");
    check_starttime(o);
    if (setns(fd, CLONE_NEWUTS) < 0)
        fail("cannot enter the jail's uts namespace: %s", strerror(errno));
    if (sethostname(name, strlen(name)) < 0)
        fail("cannot set the hostname '%s': %s", name, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------------ main */

static int parse_fd(const char *s)
{
    if (!is_number(s))
        fail("bad fd '%s'", s);
    int fd = atoi(s);
    if (!valid_fd(fd))
        fail("fd %d is not open", fd);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

int main(int argc, char **argv)
{
    static struct opts o = {.sync_fd = -1, .go_fd = -1, .exit_fd = -1};
    if (argc < 2) {
        dprintf(2, "usage: kleened-reaper start|exec|hostname [options] -- command...\n");
        return 2;
    }
    o.mode = argv[1];
    int i = 2;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "--tty") == 0) {
            o.tty = 1;
            continue;
        }
        if (strcmp(a, "--no-dev") == 0) {
            o.nodev = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            break; /* hostname mode: the positional name */
        if (!v)
            fail("option %s needs a value", a);
        i++;
        if (strcmp(a, "--sync-fd") == 0)
            sync_fd = o.sync_fd = parse_fd(v);
        else if (strcmp(a, "--go-fd") == 0)
            o.go_fd = parse_fd(v);
        else if (strcmp(a, "--exit-fd") == 0)
            o.exit_fd = parse_fd(v);
        else if (strcmp(a, "--root") == 0)
            o.root = v;
        else if (strcmp(a, "--hostname") == 0)
            o.hostname = v;
        else if (strcmp(a, "--net") == 0)
            o.net = v;
        else if (strcmp(a, "--user") == 0)
            o.user = v;
        else if (strcmp(a, "--workdir") == 0)
            o.workdir = v;
        else if (strcmp(a, "--pid") == 0)
            o.pid = (pid_t)atoi(v);
        else if (strcmp(a, "--starttime") == 0)
            o.starttime = strtoull(v, NULL, 10);
        else if (strcmp(a, "--env") == 0) {
            if (!strchr(v, '=') || v[0] == '=')
                fail("bad environment entry '%s'", v);
            if (o.nenv >= MAX_ENV)
                fail("too many environment entries");
            o.env[o.nenv++] = (char *)v;
        } else
            fail("unknown option %s", a);
    }
    /* The daemon passes the jail's environment as our own, each entry under
     * ENV_PREFIX: out of argv, where every host user (and the jail, through
     * pid 1's cmdline) could read it, and inert to a dynamic loader. */
    size_t plen = strlen(ENV_PREFIX);
    for (char **e = environ; *e; e++) {
        char *eq = strchr(*e, '=');
        if (strncmp(*e, ENV_PREFIX, plen) != 0 || !eq || !strchr(eq + 1, '=') || eq[1] == '=')
            continue;
        if (o.nenv >= MAX_ENV)
            fail("too many environment entries");
        o.env[o.nenv++] = eq + 1;
    }
    if (strcmp(o.mode, "hostname") == 0) {
        if (i >= argc)
            fail("hostname needs a name");
        return run_hostname(&o, argv[i]);
    }
    if (i >= argc || !argv[i][0])
        fail("no command given");
    o.cmd = &argv[i];
    if (strcmp(o.mode, "start") == 0)
        return run_start(&o);
    if (strcmp(o.mode, "exec") == 0)
        return run_exec(&o);
    fail("unknown mode '%s'", o.mode);
}
