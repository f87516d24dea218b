/*
 * Bad input through every function of the capvault C API. Each case must return its
 * documented code with a non-empty capvault_last_error(), and nothing may crash.
 *
 *   bad_input VAULT_DIR RECIPIENT      (keychain from $CAPVAULT_KEYSTORE)
 */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capvault.h"

static int failures = 0;

static void expect(const char *what, capvault_result got, capvault_result want, int line) {
    const char *msg = capvault_last_error();
    int needs_msg = want != CAPVAULT_OK && want != CAPVAULT_PAUSED && want != CAPVAULT_FILTERED;
    if (got != want || msg == NULL || (needs_msg && msg[0] == '\0')) {
        fprintf(stderr, "FAIL line %d: %s returned %d (want %d), last_error \"%s\"\n", line,
                what, (int)got, (int)want, msg ? msg : "(NULL)");
        failures++;
    } else if (needs_msg) {
        printf("ok %-60.60s -> %d: %s\n", what, (int)got, msg);
    }
}
#define EXPECT(call, want) expect(#call, (call), (want), __LINE__)

/* A NULL-returning call must leave a non-empty message. */
static void expect_null(const char *what, const void *got, int line) {
    const char *msg = capvault_last_error();
    if (got != NULL || msg == NULL || msg[0] == '\0') {
        fprintf(stderr, "FAIL line %d: %s returned %p, last_error \"%s\"\n", line, what, got,
                msg ? msg : "(NULL)");
        failures++;
    } else {
        printf("ok %-60.60s -> NULL: %s\n", what, msg);
    }
}
#define EXPECT_NULL(call) expect_null(#call, (const void *)(call), __LINE__)

static void expect_msg_contains(const char *needle, int line) {
    if (!strstr(capvault_last_error(), needle)) {
        fprintf(stderr, "FAIL line %d: last_error \"%s\" does not mention \"%s\"\n", line,
                capvault_last_error(), needle);
        failures++;
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* ---- 16 appending threads and one sealing/acking thread on one handle ---- */

struct shared {
    capvault *v;
    const char *recipient;
    int bad; /* set by a thread that saw an unexpected result */
};

static void *appender(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < 2000; i++) {
        capvault_result rc = capvault_append_mouse_move(s->v, 1764000000000000 + i, i, -i);
        if (rc != CAPVAULT_OK) {
            fprintf(stderr, "appender: %d: %s\n", (int)rc, capvault_last_error());
            s->bad = 1;
            return NULL;
        }
        if (i % 500 == 0) {
            static const uint8_t blob[100] = {1};
            rc = capvault_append_custom(s->v, 1764000000000000 + i, "tick", blob, sizeof blob);
            if (rc != CAPVAULT_OK) {
                s->bad = 1;
                return NULL;
            }
        }
    }
    return NULL;
}

static void *sealer(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < 20; i++) {
        capvault_bundle *b = NULL;
        capvault_result rc = capvault_seal_next(s->v, s->recipient, 64 * 1024, &b);
        if (rc != CAPVAULT_OK) {
            fprintf(stderr, "sealer: seal %d: %s\n", (int)rc, capvault_last_error());
            s->bad = 1;
            return NULL;
        }
        if (b) {
            size_t len = 0;
            if (!capvault_bundle_data(b, &len) || len == 0) s->bad = 1;
            rc = capvault_ack(s->v, capvault_bundle_id(b), NULL, 0);
            capvault_bundle_free(b);
            if (rc != CAPVAULT_OK) {
                fprintf(stderr, "sealer: ack %d: %s\n", (int)rc, capvault_last_error());
                s->bad = 1;
                return NULL;
            }
        }
        if (capvault_flush(s->v) != CAPVAULT_OK) s->bad = 1;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s VAULT_DIR RECIPIENT\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *recipient = argv[2];
    const char *keystore = getenv("CAPVAULT_KEYSTORE");
    if (!keystore) keystore = "keyutils";
    char options[200];
    snprintf(options, sizeof options, "{\"keystore\": \"%s\", \"max_payload_bytes\": 1024}",
             keystore);
    const char bad_utf8[] = {'a', (char)0xff, (char)0xfe, 0};
    capvault *v = NULL;
    capvault_bundle *b = NULL;
    char *json = NULL;
    size_t len = 0;
    uint8_t byte = 0;

    if (!capvault_version() || !*capvault_version()) {
        fprintf(stderr, "FAIL: no version\n");
        failures++;
    }

    /* ---- open: NULL, bad UTF-8, bad options ---- */
    EXPECT(capvault_open(NULL, "alice", options, &v), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_open(dir, NULL, options, &v), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_open(dir, "alice", options, NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_open(bad_utf8, "alice", options, &v), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_open(dir, bad_utf8, options, &v), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_open(dir, "alice", bad_utf8, &v), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_open(dir, "alice", "{\"frame_max_byte\": 10}", &v),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    expect_msg_contains("frame_max_byte", __LINE__);
    EXPECT(capvault_open(dir, "alice", "{\"fsync\": \"yes\"}", &v),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    expect_msg_contains("fsync", __LINE__);
    EXPECT(capvault_open(dir, "alice", "{\"policy\": {\"keystroke\": \"text\"}}", &v),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    expect_msg_contains("keystroke", __LINE__);
    EXPECT(capvault_open(dir, "alice", "not json", &v), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_open(dir, "", options, &v), CAPVAULT_ERR_INVALID_ARGUMENT);
    if (v != NULL) {
        fprintf(stderr, "FAIL: a failed open wrote *out\n");
        failures++;
    }

    EXPECT(capvault_open(dir, "alice", options, &v), CAPVAULT_OK);
    if (!v) {
        fprintf(stderr, "FAIL: cannot open the vault: %s\n", capvault_last_error());
        return 1;
    }
    /* The same vault from a second handle in this process is in use, and the message
       says where the other user is: this process. */
    capvault *v2 = NULL;
    capvault_result rc2 = capvault_open(dir, "alice", options, &v2);
    if (rc2 != CAPVAULT_ERR_IN_USE || !strstr(capvault_last_error(), "already open in this process") ||
        strstr(capvault_last_error(), "another process")) {
        fprintf(stderr, "FAIL: second open returned %d: %s\n", (int)rc2, capvault_last_error());
        failures++;
    }
    if (rc2 == CAPVAULT_OK) capvault_close(v2);

    /* ---- NULL handle for every function taking one ---- */
    EXPECT(capvault_append_mouse_move(NULL, 1, 0, 0), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_mouse_button(NULL, 1, 1, true, 0, 0), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_scroll(NULL, 1, 0, 1), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_key(NULL, 1, 4, true, "a"), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_window_focus(NULL, 1, "a", "t"), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_screenshot(NULL, 1, 1, 1, "png", &byte, 1),
           CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_custom(NULL, 1, "k", &byte, 1), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_flush(NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_pause(NULL, 10), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_resume(NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_rotate_key(NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_status_json(NULL, &json), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_seal_next(NULL, recipient, 1024, &b), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_ack(NULL, "id", NULL, 0), CAPVAULT_ERR_NULL_ARGUMENT);

    /* ---- NULL for every other pointer argument ---- */
    EXPECT(capvault_append_window_focus(v, 1, NULL, "t"), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_window_focus(v, 1, "a", NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_screenshot(v, 1, 1, 1, NULL, &byte, 1), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_screenshot(v, 1, 1, 1, "png", NULL, 10), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_custom(v, 1, NULL, &byte, 1), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_append_custom(v, 1, "k", NULL, 10), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_status_json(v, NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_seal_next(v, NULL, 1024, &b), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_seal_next(v, recipient, 1024, NULL), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_ack(v, NULL, NULL, 0), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT(capvault_ack(v, "id", NULL, 64), CAPVAULT_ERR_NULL_ARGUMENT);
    EXPECT_NULL(capvault_bundle_data(NULL, &len));
    EXPECT_NULL(capvault_bundle_id(NULL));
    /* NULL is fine for the releasing functions and the optional key text. */
    capvault_close(NULL);
    capvault_bundle_free(NULL);
    capvault_string_free(NULL);
    EXPECT(capvault_append_key(v, 1, 4, true, NULL), CAPVAULT_OK);
    /* NULL with length 0 is an empty buffer. */
    EXPECT(capvault_append_custom(v, 1, "empty", NULL, 0), CAPVAULT_OK);

    /* ---- invalid UTF-8 ---- */
    EXPECT(capvault_append_key(v, 1, 4, true, bad_utf8), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_append_window_focus(v, 1, bad_utf8, "t"), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_append_window_focus(v, 1, "a", bad_utf8), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_append_screenshot(v, 1, 1, 1, bad_utf8, &byte, 1),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_append_custom(v, 1, bad_utf8, &byte, 1), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_seal_next(v, bad_utf8, 1024, &b), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_ack(v, bad_utf8, NULL, 0), CAPVAULT_ERR_INVALID_ARGUMENT);

    /* ---- lengths above max_payload_bytes (1024 here): rejected before reading, so
     * a pointer to one byte with a huge length is safe ---- */
    EXPECT(capvault_append_screenshot(v, 1, 1, 1, "png", &byte, 1025),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    expect_msg_contains("max_payload_bytes", __LINE__);
    EXPECT(capvault_append_custom(v, 1, "k", &byte, SIZE_MAX), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_append_custom(v, 1, "k", NULL, SIZE_MAX), CAPVAULT_ERR_INVALID_ARGUMENT);

    /* ---- out of range ---- */
    EXPECT(capvault_pause(v, 0), CAPVAULT_ERR_INVALID_ARGUMENT);

    /* ---- malformed recipients ---- */
    EXPECT(capvault_seal_next(v, "", 1024, &b), CAPVAULT_ERR_INVALID_ARGUMENT);
    EXPECT(capvault_seal_next(v, "cvrecip-x25519-1qqqq", 1024, &b),
           CAPVAULT_ERR_INVALID_ARGUMENT);
    {
        /* One character changed: the checksum catches it. */
        char typo[512];
        snprintf(typo, sizeof typo, "%s", recipient);
        size_t n = strlen(typo);
        typo[n - 3] = typo[n - 3] == 'q' ? 'p' : 'q';
        EXPECT(capvault_seal_next(v, typo, 1024, &b), CAPVAULT_ERR_INVALID_ARGUMENT);
    }
    if (b != NULL) {
        fprintf(stderr, "FAIL: a failed seal wrote *out\n");
        failures++;
    }

    /* ---- unknown bundle id ---- */
    EXPECT(capvault_ack(v, "no-such-bundle", NULL, 0), CAPVAULT_ERR_NOT_FOUND);

    /* ---- bundle accessors with a NULL output ---- */
    EXPECT(capvault_append_mouse_move(v, 2, 3, 4), CAPVAULT_OK);
    EXPECT(capvault_seal_next(v, recipient, 1 << 20, &b), CAPVAULT_OK);
    if (!b) {
        fprintf(stderr, "FAIL: nothing sealed\n");
        failures++;
    } else {
        EXPECT_NULL(capvault_bundle_data(b, NULL));
        if (!capvault_bundle_data(b, &len) || len == 0 || !capvault_bundle_id(b)) {
            fprintf(stderr, "FAIL: bundle accessors\n");
            failures++;
        }
        EXPECT(capvault_ack(v, capvault_bundle_id(b), NULL, 0), CAPVAULT_OK);
        capvault_bundle_free(b);
        b = NULL;
    }

    /* ---- errno-style messages: a success never clears the last failure ---- */
    EXPECT(capvault_pause(v, 0), CAPVAULT_ERR_INVALID_ARGUMENT);
    {
        char saved[512];
        size_t n = capvault_last_error_copy(saved, sizeof saved);
        const char *before = capvault_last_error();
        EXPECT(capvault_append_mouse_move(v, 3, 1, 1), CAPVAULT_OK);
        EXPECT(capvault_flush(v), CAPVAULT_OK);
        capvault_string_free(NULL);
        capvault_bundle_free(NULL);
        /* Both arguments evaluated in either order: the message is not freed by the
         * version call, and still the pause failure. */
        char line[1024];
        snprintf(line, sizeof line, "%s %s", capvault_version(), capvault_last_error());
        if (n == 0 || n != strlen(saved) || capvault_last_error() != before ||
            strcmp(capvault_last_error(), saved) != 0 || !strstr(line, saved)) {
            fprintf(stderr, "FAIL: a success changed the last error (\"%s\" -> \"%s\")\n",
                    saved, capvault_last_error());
            failures++;
        }
        /* The handle keeps its own copy, for callers that hop threads. */
        char hmsg[512];
        size_t hn = capvault_handle_last_error(v, hmsg, sizeof hmsg);
        if (hn != n || strcmp(hmsg, saved) != 0) {
            fprintf(stderr, "FAIL: handle last error \"%s\", want \"%s\"\n", hmsg, saved);
            failures++;
        }
        /* Truncation: NUL-terminated, full length returned; len 0 writes nothing. */
        char small[8];
        memset(small, 'x', sizeof small);
        size_t sn = capvault_last_error_copy(small, sizeof small);
        char none = 'z';
        if (sn != n || small[7] != '\0' || strncmp(small, saved, 7) != 0 ||
            capvault_last_error_copy(&none, 0) != n || none != 'z' ||
            capvault_last_error_copy(NULL, 0) != n ||
            capvault_handle_last_error(v, small, sizeof small) != n || small[7] != '\0') {
            fprintf(stderr, "FAIL: truncated copies of the last error\n");
            failures++;
        }
        printf("ok errno-style last error kept across successes: %s\n", line);
    }
    {
        /* A pointer that is no handle is never dereferenced: CLOSED, on the thread and
         * in the handle query. */
        int not_a_handle = 0;
        char hmsg[256];
        EXPECT(capvault_flush((capvault *)&not_a_handle), CAPVAULT_ERR_CLOSED);
        if (capvault_handle_last_error((capvault *)&not_a_handle, hmsg, sizeof hmsg) == 0 ||
            !strstr(hmsg, "closed") || capvault_handle_last_error(NULL, hmsg, sizeof hmsg) == 0) {
            fprintf(stderr, "FAIL: handle last error of a non-handle: \"%s\"\n", hmsg);
            failures++;
        }
        capvault_close((capvault *)&not_a_handle);
        expect_msg_contains("closed", __LINE__);
    }

    /* ---- result codes: ranges, descriptions ---- */
    {
        const capvault_result errors[] = {
            CAPVAULT_ERR_NULL_ARGUMENT, CAPVAULT_ERR_INVALID_ARGUMENT, CAPVAULT_ERR_KEYCHAIN,
            CAPVAULT_ERR_STORAGE, CAPVAULT_ERR_STORAGE_FULL, CAPVAULT_ERR_TAMPERED,
            CAPVAULT_ERR_IN_USE, CAPVAULT_ERR_ERASED, CAPVAULT_ERR_NOT_FOUND,
            CAPVAULT_ERR_CLOSED, CAPVAULT_ERR_PANIC, CAPVAULT_ERR_FORKED,
            CAPVAULT_ERR_BAD_BUNDLE, 42, 99, -1, 200, 100000};
        for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
            const char *d = capvault_result_str(errors[i]);
            if (!CAPVAULT_IS_ERROR(errors[i]) || !d || !*d) {
                fprintf(stderr, "FAIL: code %d is an error, described \"%s\"\n",
                        (int)errors[i], d ? d : "(NULL)");
                failures++;
            }
        }
        const capvault_result fine[] = {CAPVAULT_OK, CAPVAULT_PAUSED, CAPVAULT_FILTERED, 150, 199};
        for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
            const char *d = capvault_result_str(fine[i]);
            if (CAPVAULT_IS_ERROR(fine[i]) || !d || !*d) {
                fprintf(stderr, "FAIL: code %d is not an error\n", (int)fine[i]);
                failures++;
            }
        }
        /* The check evaluates its argument once (a call inside it runs once). */
        int calls = 0;
        if (CAPVAULT_IS_ERROR((calls++, CAPVAULT_ERR_STORAGE)) != 1 || calls != 1 ||
            CAPVAULT_IS_ERROR((calls++, CAPVAULT_PAUSED)) != 0 || calls != 2) {
            fprintf(stderr, "FAIL: CAPVAULT_IS_ERROR evaluated its argument %d times\n", calls);
            failures++;
        }
        if (!strstr(capvault_result_str(CAPVAULT_ERR_IN_USE), "another process") ||
            !strstr(capvault_result_str(CAPVAULT_ERR_IN_USE), "this one") ||
            !strstr(capvault_result_str(150), "not an error") ||
            !strstr(capvault_result_str(42), "unknown error") ||
            capvault_abi_version() != CAPVAULT_ABI_VERSION) {
            fprintf(stderr, "FAIL: descriptions or ABI version\n");
            failures++;
        }
        printf("ok result ranges and descriptions: %d -> %s\n", CAPVAULT_ERR_FORKED,
               capvault_result_str(CAPVAULT_ERR_FORKED));
    }

    /* ---- bundles: double free and use after free are detected ---- */
    EXPECT(capvault_append_mouse_move(v, 4, 5, 6), CAPVAULT_OK);
    EXPECT(capvault_seal_next(v, recipient, 1 << 20, &b), CAPVAULT_OK);
    if (!b) {
        fprintf(stderr, "FAIL: nothing sealed\n");
        failures++;
    } else {
        char id[256];
        snprintf(id, sizeof id, "%s", capvault_bundle_id(b));
        capvault_bundle_free(b);
        capvault_bundle_free(b);
        expect_msg_contains("already freed", __LINE__);
        EXPECT_NULL(capvault_bundle_data(b, &len));
        expect_msg_contains("already freed", __LINE__);
        EXPECT_NULL(capvault_bundle_id(b));
        int not_a_bundle = 0;
        EXPECT_NULL(capvault_bundle_id((capvault_bundle *)&not_a_bundle));
        capvault_bundle_free((capvault_bundle *)&not_a_bundle);
        expect_msg_contains("never returned by capvault_seal_next", __LINE__);
        EXPECT(capvault_ack(v, id, NULL, 0), CAPVAULT_OK);
        b = NULL;
    }

    /* ---- 16 appending threads while another seals and acknowledges ---- */
    {
        struct shared s = {v, recipient, 0};
        pthread_t threads[17];
        for (int i = 0; i < 16; i++) pthread_create(&threads[i], NULL, appender, &s);
        pthread_create(&threads[16], NULL, sealer, &s);
        for (int i = 0; i < 17; i++) pthread_join(threads[i], NULL);
        if (s.bad) {
            fprintf(stderr, "FAIL: concurrent appends, seals and acks\n");
            failures++;
        } else {
            printf("ok 16 appending threads + 1 sealing thread\n");
        }
    }

    /* ---- after close: every call on the handle is CLOSED ---- */
    capvault_close(v);
    EXPECT(capvault_append_mouse_move(v, 1, 0, 0), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_mouse_button(v, 1, 1, true, 0, 0), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_scroll(v, 1, 0, 1), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_key(v, 1, 4, true, "a"), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_window_focus(v, 1, "a", "t"), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_screenshot(v, 1, 1, 1, "png", &byte, 1), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_append_custom(v, 1, "k", &byte, 1), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_flush(v), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_pause(v, 10), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_resume(v), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_rotate_key(v), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_status_json(v, &json), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_seal_next(v, recipient, 1024, &b), CAPVAULT_ERR_CLOSED);
    EXPECT(capvault_ack(v, "id", NULL, 0), CAPVAULT_ERR_CLOSED);
    capvault_close(v); /* closing twice is harmless */
    if (json != NULL || b != NULL) {
        fprintf(stderr, "FAIL: a failed call wrote an output\n");
        failures++;
    }

    /* Reopen: everything the threads appended and flushed is there to seal. A new
       handle never reuses a closed one's address, so the stale pointer stays CLOSED. */
    capvault *stale = v;
    v = NULL;
    EXPECT(capvault_open(dir, "alice", options, &v), CAPVAULT_OK);
    if (v == stale) {
        fprintf(stderr, "FAIL: a new handle reused a closed handle's address\n");
        failures++;
    }
    EXPECT(capvault_flush(stale), CAPVAULT_ERR_CLOSED);
    {
        /* A failed close stays the handle's last failure: calls on the closed handle
           return CLOSED (and say so on the thread) but do not replace it. The vault's
           directory removed while open makes the final flush fail. */
        char gone[4096], closing[512], after[512];
        snprintf(gone, sizeof gone, "%s-removed", dir);
        capvault *g = NULL;
        EXPECT(capvault_open(gone, "alice", options, &g), CAPVAULT_OK);
        EXPECT(capvault_append_mouse_move(g, 1, 1, 1), CAPVAULT_OK);
        if (nftw(gone, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
            fprintf(stderr, "FAIL: cannot remove %s\n", gone);
            failures++;
        }
        capvault_close(g);
        capvault_handle_last_error(g, closing, sizeof closing);
        EXPECT(capvault_flush(g), CAPVAULT_ERR_CLOSED);
        expect_msg_contains("closed", __LINE__);
        EXPECT(capvault_append_mouse_move(g, 2, 1, 1), CAPVAULT_ERR_CLOSED);
        capvault_handle_last_error(g, after, sizeof after);
        if (!strstr(closing, gone) || strcmp(closing, after) != 0) {
            fprintf(stderr, "FAIL: close failure \"%s\", after calls on the closed handle \"%s\"\n",
                    closing, after);
            failures++;
        } else {
            printf("ok a failed close stays the handle's last error: %s\n", after);
        }
    }
    EXPECT(capvault_status_json(v, &json), CAPVAULT_OK);
    capvault_string_free(json);
    capvault_close(v);

    if (failures) {
        fprintf(stderr, "bad_input: %d check(s) failed\n", failures);
        return 1;
    }
    printf("bad_input: all checks passed\n");
    return 0;
}
