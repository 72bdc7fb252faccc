#include "pvkit_crash.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static __thread char thread_context[512];
// The last context any thread set: for a signal sent to the process, which any thread may take.
static char last_context[512];
static char program_name[64] = "pvkit";
static struct sigaction previous[32];
static const int signals[] = {SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE, SIGABRT};

void pvkit_crash_context_set(const char *context) {
    if (context == NULL) {
        thread_context[0] = 0;
        return;
    }
    strncpy(thread_context, context, sizeof(thread_context) - 1);
    thread_context[sizeof(thread_context) - 1] = 0;
    if (context[0] != 0) {
        strncpy(last_context, context, sizeof(last_context) - 1);
        last_context[sizeof(last_context) - 1] = 0;
    }
}

static void write_all(const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t n = write(STDERR_FILENO, text, length);
        if (n <= 0) return;
        text += n;
        length -= (size_t)n;
    }
}

static void handler(int signal, siginfo_t *info, void *context) {
    // Only async-signal-safe calls: write(2) of fixed buffers.
    const char *what = thread_context[0] != 0 ? thread_context : last_context;
    if (what[0] != 0) {
        write_all(program_name);
        write_all(": crashed while ");
        write_all(what);
        write_all("\n");
    }
    struct sigaction *before = &previous[signal];
    if (before->sa_flags & SA_SIGINFO) {
        if (before->sa_sigaction != NULL) {
            before->sa_sigaction(signal, info, context);
            return;
        }
    } else if (before->sa_handler != SIG_DFL && before->sa_handler != SIG_IGN && before->sa_handler != NULL) {
        before->sa_handler(signal);
        return;
    }
    struct sigaction fallback;
    memset(&fallback, 0, sizeof(fallback));
    fallback.sa_handler = SIG_DFL;
    sigaction(signal, &fallback, NULL);
    raise(signal);
}

void pvkit_crash_context_install(const char *program) {
    static int installed = 0;
    if (__atomic_exchange_n(&installed, 1, __ATOMIC_ACQ_REL)) return;
    if (program != NULL) {
        strncpy(program_name, program, sizeof(program_name) - 1);
        program_name[sizeof(program_name) - 1] = 0;
    }
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = handler;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(signals[i], &action, &previous[signals[i]]);
    }
}
