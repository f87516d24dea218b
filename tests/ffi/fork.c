/*
 * A handle used in a child process after fork() fails at once with
 * CAPVAULT_ERR_FORKED and never blocks, while the parent keeps working.
 *
 *   fork VAULT_DIR OTHER_DIR RECIPIENT      (keychain from $CAPVAULT_KEYSTORE)
 *
 * First a child forked before any open opens and uses a vault of its own (OTHER_DIR).
 * Then the parent opens VAULT_DIR, seals a bundle, and forks while 4 threads are
 * appending. That child (under a 20 s alarm, so a blocked call fails the test) checks
 * that every call on the inherited handle returns CAPVAULT_ERR_FORKED with a message,
 * that close leaves the vault alone, that it can free the inherited bundle, and that
 * opening a vault fails with CAPVAULT_ERR_FORKED instead of blocking. The parent then appends mouse moves ts 1..N
 * (all stored), flushes and closes. Prints "fork: ok" and exits 0 on success.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capvault.h"

static capvault *v = NULL;
static int failures = 0;
static volatile int stop = 0;

#define EXPECT(call, want)                                                                  \
    do {                                                                                    \
        capvault_result rc_ = (call);                                                       \
        if (rc_ != (want)) {                                                                \
            printf("FAIL line %d (pid %d): %s returned %d, want %d: %s\n", __LINE__,        \
                   (int)getpid(), #call, (int)rc_, (int)(want), capvault_last_error());     \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static long long next_ts = 1;
static pthread_mutex_t ts_lock = PTHREAD_MUTEX_INITIALIZER;

static void *appender(void *arg) {
    (void)arg;
    while (!stop) {
        pthread_mutex_lock(&ts_lock);
        long long ts = next_ts++;
        capvault_result rc = capvault_append_mouse_move(v, ts, 1, 1);
        pthread_mutex_unlock(&ts_lock);
        if (rc != CAPVAULT_OK) {
            printf("FAIL: parent append %d: %s\n", (int)rc, capvault_last_error());
            failures++;
            return NULL;
        }
    }
    return NULL;
}

static int child(const char *other_dir, const char *options, capvault_bundle *b) {
    alarm(20); /* a blocked call ends the child with SIGALRM */
    char *json = NULL;
    capvault_bundle *nb = NULL;
    EXPECT(capvault_append_mouse_move(v, 1, 2, 3), CAPVAULT_ERR_FORKED);
    if (!strstr(capvault_last_error(), "fork")) {
        printf("FAIL: message \"%s\"\n", capvault_last_error());
        failures++;
    }
    EXPECT(capvault_append_key(v, 1, 4, true, "a"), CAPVAULT_ERR_FORKED);
    EXPECT(capvault_flush(v), CAPVAULT_ERR_FORKED);
    EXPECT(capvault_pause(v, 10), CAPVAULT_ERR_FORKED);
    EXPECT(capvault_status_json(v, &json), CAPVAULT_ERR_FORKED);
    EXPECT(capvault_seal_next(v, "cvrecip-x", 1024, &nb), CAPVAULT_ERR_FORKED);
    EXPECT(capvault_ack(v, "id", NULL, 0), CAPVAULT_ERR_FORKED);
    char msg[256];
    if (capvault_handle_last_error(v, msg, sizeof msg) == 0 || !strstr(msg, "fork")) {
        printf("FAIL: handle last error \"%s\"\n", msg);
        failures++;
    }
    capvault_close(v); /* the parent's vault: nothing is released here */
    if (!strstr(capvault_last_error(), "fork")) {
        printf("FAIL: close in the child: \"%s\"\n", capvault_last_error());
        failures++;
    }
    EXPECT(capvault_flush(v), CAPVAULT_ERR_FORKED);
    /* The inherited bundle is plain memory: readable and freeable here. */
    size_t len = 0;
    if (!capvault_bundle_data(b, &len) || len == 0) {
        printf("FAIL: inherited bundle: %s\n", capvault_last_error());
        failures++;
    }
    capvault_bundle_free(b);
    /* Nor can it open a vault of its own (the storage engine's threads stayed in the
     * parent): it says so at once. */
    capvault *own = NULL;
    EXPECT(capvault_open(other_dir, "carol", options, &own), CAPVAULT_ERR_FORKED);
    if (own != NULL || !strstr(capvault_last_error(), "fork")) {
        printf("FAIL: open in the child: \"%s\"\n", capvault_last_error());
        failures++;
    }
    printf("child: %d failure(s)\n", failures);
    fflush(stdout);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s VAULT_DIR OTHER_DIR RECIPIENT\n", argv[0]);
        return 2;
    }
    const char *keystore = getenv("CAPVAULT_KEYSTORE");
    char options[128];
    snprintf(options, sizeof options, "{\"keystore\": \"%s\"}", keystore ? keystore : "keyutils");
    /* Forking before the first open (as a daemon does): the child opens and uses a
     * vault of its own. */
    fflush(stdout);
    pid_t early = fork();
    if (early == 0) {
        alarm(20);
        capvault *own = NULL;
        EXPECT(capvault_open(argv[2], "carol", options, &own), CAPVAULT_OK);
        EXPECT(capvault_append_mouse_move(own, 5, 6, 7), CAPVAULT_OK);
        EXPECT(capvault_flush(own), CAPVAULT_OK);
        capvault_close(own);
        fflush(stdout);
        _exit(failures ? 1 : 0);
    }
    int early_status = 0;
    if (early < 0 || waitpid(early, &early_status, 0) != early || early_status != 0) {
        printf("FAIL: the child forked before any open ended with 0x%x\n", early_status);
        failures++;
    }

    EXPECT(capvault_open(argv[1], "alice", options, &v), CAPVAULT_OK);
    if (!v) return 1;
    EXPECT(capvault_append_custom(v, 0, "before-fork", NULL, 0), CAPVAULT_OK);
    capvault_bundle *b = NULL;
    EXPECT(capvault_seal_next(v, argv[3], 1 << 20, &b), CAPVAULT_OK);
    if (!b) return 1;

    pthread_t threads[4];
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, appender, NULL);
    sleep_ms(50);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) _exit(child(argv[2], options, b));
    sleep_ms(50);
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);

    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        printf("FAIL: child ended with status 0x%x%s\n", status,
               WIFSIGNALED(status) ? " (killed: blocked?)" : "");
        failures++;
    }
    /* The parent's handle and bundle are untouched. */
    EXPECT(capvault_ack(v, capvault_bundle_id(b), NULL, 0), CAPVAULT_OK);
    capvault_bundle_free(b);
    EXPECT(capvault_append_mouse_move(v, next_ts++, 1, 1), CAPVAULT_OK);
    EXPECT(capvault_flush(v), CAPVAULT_OK);
    capvault_close(v);
    printf("parent: appended %lld mouse moves\n", next_ts - 1);
    if (failures) return 1;
    printf("fork: ok\n");
    return 0;
}
