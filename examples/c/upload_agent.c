/*
 * A capture agent whose vault uploads to a capvault collector by itself (the built-in
 * uploader: no HTTP code here).
 *
 *   upload_agent VAULT_DIR USER URL RECIPIENT RECEIPT_KEY
 *
 * URL is the collector's base URL (https://..., or http:// to loopback), RECIPIENT its
 * "cvrecip-..." (bundles are sealed to it) and RECEIPT_KEY its "cvreceipt-ed25519-1..."
 * (the vault acknowledges a bundle only with a receipt under that key). The enrollment
 * token comes from $CAPVAULT_UPLOAD_TOKEN (needed only until the device is enrolled),
 * the keychain from $CAPVAULT_KEYSTORE (default "auto").
 *
 * Opens the vault with the `upload` option, appends 200 mouse moves, a click, a key,
 * a window switch, a 200 kB screenshot (larger than a bundle, so it goes alone) and a
 * custom event, flushes, then polls capvault_status_json until the uploader reports
 * no pending bundle, for at most $CAPVAULT_UPLOAD_WAIT seconds (default 60), and
 * closes. Exits 0 once everything is uploaded and acknowledged; 3 if the upload did
 * not finish in time (the data stays in the vault and goes at the next open); 1 on an
 * API error.
 *
 * Build:  cc upload_agent.c $(pkg-config --cflags --libs capvault) -o upload_agent
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capvault.h"

static int fail(const char *what, capvault_result rc) {
    fprintf(stderr, "upload_agent: %s failed (%d, %s): %s\n", what, (int)rc,
            capvault_result_str(rc), capvault_last_error());
    return 1;
}

/* On failure, report first (a failing close would replace the message), then close. */
#define CHECK(call)                                         \
    do {                                                    \
        capvault_result rc_ = (call);                       \
        if (CAPVAULT_IS_ERROR(rc_)) {                       \
            int status_ = fail(#call, rc_);                 \
            capvault_close(v);                              \
            return status_;                                 \
        }                                                   \
    } while (0)

/* The options are JSON: refuse values that would need escaping. */
static int plain(const char *name, const char *s) {
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) {
            fprintf(stderr, "upload_agent: %s contains a character not allowed here\n", name);
            return 0;
        }
    }
    return 1;
}

/* The integer after "key": in the status JSON, or -1. */
static long long json_int(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (!p) return -1;
    return strtoll(p + strlen(pat), NULL, 10);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s VAULT_DIR USER URL RECIPIENT RECEIPT_KEY\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *user = argv[2], *url = argv[3], *recipient = argv[4],
               *receipt_key = argv[5];
    const char *token = getenv("CAPVAULT_UPLOAD_TOKEN");
    const char *keystore = getenv("CAPVAULT_KEYSTORE");
    if (!keystore || !*keystore) keystore = "auto";
    const char *wait_env = getenv("CAPVAULT_UPLOAD_WAIT");
    long wait_secs = (wait_env && *wait_env) ? strtol(wait_env, NULL, 10) : 60;
    if (!plain("URL", url) || !plain("RECIPIENT", recipient) ||
        !plain("RECEIPT_KEY", receipt_key) || !plain("keystore", keystore) ||
        (token && !plain("the token", token)))
        return 2;

    char token_json[512] = "null";
    if (token && *token) snprintf(token_json, sizeof token_json, "\"%s\"", token);
    char options[4096];
    int n = snprintf(options, sizeof options,
                     "{\"keystore\": \"%s\", \"collector_receipt_key\": \"%s\", "
                     "\"upload\": {\"url\": \"%s\", \"recipient\": \"%s\", \"token\": %s, "
                     "\"max_bundle_bytes\": 65536, \"interval_secs\": 1}}",
                     keystore, receipt_key, url, recipient, token_json);
    if (n < 0 || (size_t)n >= sizeof options) {
        fprintf(stderr, "upload_agent: arguments too long\n");
        return 2;
    }

    capvault *v = NULL;
    capvault_result rc = capvault_open(dir, user, options, &v);
    if (CAPVAULT_IS_ERROR(rc)) return fail("capvault_open", rc);

    const int64_t t = 1764000000000000; /* microseconds since the Unix epoch */
    for (int i = 0; i < 200; i++) CHECK(capvault_append_mouse_move(v, t + i, i, 2 * i));
    CHECK(capvault_append_mouse_button(v, t + 200, 1, true, 199, 398));
    CHECK(capvault_append_key(v, t + 201, 4 /* HID 'a' */, true, NULL));
    CHECK(capvault_append_window_focus(v, t + 202, "editor", "notes.txt"));
    size_t shot_len = 200000; /* more than max_bundle_bytes: a bundle of its own */
    uint8_t *shot = malloc(shot_len);
    if (!shot) {
        capvault_close(v);
        return 1;
    }
    for (size_t i = 0; i < shot_len; i++) shot[i] = (uint8_t)(i * 7 + 3);
    rc = capvault_append_screenshot(v, t + 203, 1920, 1080, "png", shot, shot_len);
    free(shot);
    CHECK(rc);
    static const uint8_t meta[] = {0xde, 0xad, 0xbe, 0xef};
    CHECK(capvault_append_custom(v, t + 204, "clipboard-meta", meta, sizeof meta));
    CHECK(capvault_flush(v));
    printf("appended 205 events\n");

    /* The uploader works in the background; an agent would simply carry on capturing.
     * Here we wait (bounded) until it has every bundle acknowledged with a receipt. */
    int done = 0;
    char *status = NULL;
    for (long waited_ms = 0;; waited_ms += 200) {
        capvault_string_free(status);
        status = NULL;
        CHECK(capvault_status_json(v, &status));
        if (json_int(status, "pending_bundles") == 0) {
            done = 1;
            break;
        }
        if (waited_ms >= wait_secs * 1000) break;
        sleep_ms(200);
    }
    printf("status: %s\n", status);
    if (done)
        printf("uploaded %lld bundle(s), %lld bytes\n", json_int(status, "uploaded_bundles"),
               json_int(status, "uploaded_bytes"));
    else
        fprintf(stderr,
                "upload_agent: the upload did not finish within %ld s (see last_error in the "
                "status); the data stays in the vault\n",
                wait_secs);
    capvault_string_free(status);

    /* close flushes too but returns nothing: flush first to know the data is on disk. */
    CHECK(capvault_flush(v));
    capvault_close(v);
    return done ? 0 : 3;
}
