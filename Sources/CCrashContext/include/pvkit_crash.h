// What a thread is working on, printed if the process crashes there: a Swift trap on input
// would otherwise end pvcheck with no word of which image or stage it was in.
#ifndef PVKIT_CRASH_H
#define PVKIT_CRASH_H

/// Sets this thread's context (copied, at most 511 bytes); NULL or "" clears it.
void pvkit_crash_context_set(const char *context);
/// Installs the handlers for SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE and SIGABRT once: each
/// writes "<program>: crashed while <context>" (the crashing thread's, else the last any thread
/// set) to stderr, then hands the signal to the handler
/// that was there before (Swift's backtracer) or to the default action.
void pvkit_crash_context_install(const char *program);

#endif
