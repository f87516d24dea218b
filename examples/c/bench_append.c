/*
 * The C half of the C-path benchmark (scripts/bench-c-vs-rust.sh): THREADS threads
 * append EVENTS small events (mouse moves) in all to one vault through libcapvault,
 * then one durable flush, exactly as ffi/examples/append_rust.rs does through Rust.
 *
 *   bench_append VAULT_DIR THREADS EVENTS
 *
 * Prints "c: THREADS threads, EVENTS events, SECONDS s, RATE events/s". Keys in kernel
 * keyutils; VAULT_DIR must not exist.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "capvault.h"

static capvault *v;
static pthread_barrier_t start;
static unsigned long long per;

static void *worker(void *arg) {
    unsigned long long t = (unsigned long long)(uintptr_t)arg;
    pthread_barrier_wait(&start);
    /* In locals, as an agent holds its handle: globals are reloaded after every call. */
    capvault *vault = v;
    const unsigned long long count = per;
    for (unsigned long long i = 0; i < count; i++) {
        unsigned long long n = t * count + i;
        capvault_result rc = capvault_append_mouse_move(
            vault, 1764000000000000LL + (int64_t)n * 125, (int32_t)(n % 1920), (int32_t)(n % 1080));
        if (CAPVAULT_IS_ERROR(rc)) {
            fprintf(stderr, "append: %s\n", capvault_last_error());
            exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s VAULT_DIR THREADS EVENTS\n", argv[0]);
        return 2;
    }
    unsigned long threads = strtoul(argv[2], NULL, 10);
    unsigned long long events = strtoull(argv[3], NULL, 10);
    if (threads == 0 || threads > 256 || events < threads) return 2;
    per = events / threads;
    if (CAPVAULT_IS_ERROR(capvault_open(argv[1], "bench", "{\"keystore\": \"keyutils\"}", &v))) {
        fprintf(stderr, "open: %s\n", capvault_last_error());
        return 1;
    }
    pthread_t tids[256];
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (unsigned long t = 0; t < threads; t++)
        pthread_create(&tids[t], NULL, worker, (void *)(uintptr_t)t);
    pthread_barrier_wait(&start);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned long t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    if (CAPVAULT_IS_ERROR(capvault_flush(v))) {
        fprintf(stderr, "flush: %s\n", capvault_last_error());
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    capvault_close(v);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    unsigned long long total = per * threads;
    printf("c: %lu threads, %llu events, %.3f s, %.0f events/s\n", threads, total, secs,
           (double)total / secs);
    return 0;
}
