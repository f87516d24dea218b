/*
 * capvault calls at the edges of a process's and a thread's life, where the library's
 * thread-local storage is already released:
 *
 *   exit_paths VAULT_DIR MODE      (keychain from $CAPVAULT_KEYSTORE)
 *
 * MODE atexit:     main appends and returns; an atexit handler appends once more,
 *                  flushes and closes the vault.
 * MODE destructor: the same from a function marked __attribute__((destructor)).
 * MODE thread:     a thread that already used the library appends, fails a call and
 *                  reads the message from a pthread key destructor, which runs after
 *                  the thread's thread-local storage is torn down; main then closes.
 *
 * Each mode appends 3 mouse moves (ts 1, 2, 3) that must be in the vault afterwards,
 * prints "MODE: ok" and exits 0; on a failed check it prints why and exits 3.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capvault.h"

static capvault *v = NULL;
static const char *mode = "";

static void die(const char *what, capvault_result rc) {
    printf("%s: %s returned %d: %s\n", mode, what, (int)rc, capvault_last_error());
    fflush(stdout);
    _exit(3);
}

#define MUST(call)                                   \
    do {                                             \
        capvault_result rc_ = (call);                \
        if (rc_ != CAPVAULT_OK) die(#call, rc_);     \
    } while (0)

/* A failing call must give its code and a non-empty message, and must not clear a
 * later success's view of it. */
static void failing_call_reports(void) {
    capvault_result rc = capvault_flush(NULL);
    const char *msg = capvault_last_error();
    char copy[256];
    size_t n = capvault_last_error_copy(copy, sizeof copy);
    if (rc != CAPVAULT_ERR_NULL_ARGUMENT || !msg || !*msg || n == 0 || strcmp(copy, msg) != 0)
        die("capvault_flush(NULL) (message)", rc);
    printf("%s: failing call reported: %s\n", mode, msg);
}

static void close_at_the_end(void) {
    printf("%s: %s %s\n", mode, capvault_version(), capvault_last_error());
    MUST(capvault_append_mouse_move(v, 3, 30, 30));
    MUST(capvault_flush(v));
    failing_call_reports();
    capvault_close(v);
    /* The closed handle answers CLOSED, and a second close is harmless. */
    if (capvault_append_mouse_move(v, 4, 0, 0) != CAPVAULT_ERR_CLOSED) die("append after close", -1);
    capvault_close(v);
    printf("%s: ok\n", mode);
    fflush(stdout);
}

static void at_exit(void) { close_at_the_end(); }

__attribute__((destructor)) static void at_unload(void) {
    if (strcmp(mode, "destructor") == 0) close_at_the_end();
}

static pthread_key_t key;

static void late(void *arg) {
    (void)arg;
    MUST(capvault_append_mouse_move(v, 3, 30, 30));
    failing_call_reports();
}

static void *worker(void *arg) {
    (void)arg;
    /* Use the library (and its thread-locals) on this thread first. */
    MUST(capvault_append_mouse_move(v, 2, 20, 20));
    if (capvault_flush(NULL) != CAPVAULT_ERR_NULL_ARGUMENT) die("capvault_flush(NULL)", -1);
    pthread_setspecific(key, (void *)1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s VAULT_DIR atexit|destructor|thread\n", argv[0]);
        return 2;
    }
    mode = argv[2];
    const char *keystore = getenv("CAPVAULT_KEYSTORE");
    char options[128];
    snprintf(options, sizeof options, "{\"keystore\": \"%s\"}", keystore ? keystore : "keyutils");
    MUST(capvault_open(argv[1], "alice", options, &v));
    MUST(capvault_append_mouse_move(v, 1, 10, 10));
    /* A failure on the main thread before exit: its message outlives main. */
    if (capvault_pause(v, 0) != CAPVAULT_ERR_INVALID_ARGUMENT) die("capvault_pause(0)", -1);

    if (strcmp(mode, "atexit") == 0) {
        MUST(capvault_append_mouse_move(v, 2, 20, 20));
        atexit(at_exit);
        return 0;
    }
    if (strcmp(mode, "destructor") == 0) {
        MUST(capvault_append_mouse_move(v, 2, 20, 20));
        return 0;
    }
    if (strcmp(mode, "thread") == 0) {
        pthread_key_create(&key, late);
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
        pthread_join(t, NULL);
        MUST(capvault_flush(v));
        capvault_close(v);
        printf("%s: ok\n", mode);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
