/*
 * A minimal capture agent using the capvault C API.
 *
 *   agent VAULT_DIR USER RECIPIENT OUT_DIR
 *
 * Opens the vault (keychain from $CAPVAULT_KEYSTORE, default "auto"), appends one
 * event of every type, pauses and resumes, flushes, prints the status, rotates the
 * data key, seals everything pending to RECIPIENT (bundle-1.cvb, bundle-2.cvb, ... in
 * OUT_DIR), acknowledges each bundle and closes. Exits 0 on success.
 *
 * Build:  cc agent.c $(pkg-config --cflags --libs capvault) -o agent
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capvault.h"

/* Reports a failed call. Call it right after the call: the message is this thread's
 * last failure, and a later failing call (even capvault_close) would replace it. */
static int fail(const char *what, capvault_result rc) {
    fprintf(stderr, "agent: %s failed (%d, %s): %s\n", what, (int)rc, capvault_result_str(rc),
            capvault_last_error());
    return 1;
}

/* A call that must return `expected`: on anything else, report first, then close. */
#define CHECK(call, expected)                                \
    do {                                                     \
        capvault_result rc_ = (call);                        \
        if (rc_ != (expected)) {                             \
            int status_ = fail(#call, rc_);                  \
            capvault_close(v);                               \
            return status_;                                  \
        }                                                    \
    } while (0)

static int write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t n = fwrite(data, 1, len, f);
    int closed = fclose(f);
    return (n == len && closed == 0) ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s VAULT_DIR USER RECIPIENT OUT_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *user = argv[2], *recipient = argv[3], *out_dir = argv[4];

    const char *keystore = getenv("CAPVAULT_KEYSTORE");
    if (!keystore || !*keystore) keystore = "auto";
    char options[256];
    /* keystrokes "text" keeps typed text; the default keeps only key categories. */
    snprintf(options, sizeof options,
             "{\"keystore\": \"%s\", \"policy\": {\"keystrokes\": \"text\"}}", keystore);

    /* The library must speak the ABI this program was compiled for. */
    if (capvault_abi_version() != CAPVAULT_ABI_VERSION) {
        fprintf(stderr, "agent: libcapvault %s has ABI %u, this program needs %u\n",
                capvault_version(), (unsigned)capvault_abi_version(), CAPVAULT_ABI_VERSION);
        return 1;
    }
    printf("capvault %s (header %d.%d.%d)\n", capvault_version(), CAPVAULT_VERSION_MAJOR,
           CAPVAULT_VERSION_MINOR, CAPVAULT_VERSION_PATCH);

    capvault *v = NULL;
    capvault_result rc = capvault_open(dir, user, options, &v);
    if (CAPVAULT_IS_ERROR(rc)) return fail("capvault_open", rc);

    const int64_t t = 1764000000000000; /* microseconds since the Unix epoch */
    CHECK(capvault_append_mouse_move(v, t + 1, 640, 480), CAPVAULT_OK);
    CHECK(capvault_append_mouse_button(v, t + 2, 1, true, 641, 481), CAPVAULT_OK);
    CHECK(capvault_append_scroll(v, t + 3, 0, -120), CAPVAULT_OK);
    CHECK(capvault_append_key(v, t + 4, 4 /* HID 'a' */, true, "a"), CAPVAULT_OK);
    CHECK(capvault_append_key(v, t + 5, 4, false, NULL), CAPVAULT_OK);
    CHECK(capvault_append_window_focus(v, t + 6, "editor", "notes.txt"), CAPVAULT_OK);

    size_t shot_len = 200000; /* larger than one chunk */
    uint8_t *shot = malloc(shot_len);
    if (!shot) return 1;
    for (size_t i = 0; i < shot_len; i++) shot[i] = (uint8_t)(i * 7 + 3);
    rc = capvault_append_screenshot(v, t + 7, 1920, 1080, "png", shot, shot_len);
    free(shot);
    CHECK(rc, CAPVAULT_OK);
    static const uint8_t meta[] = {0xde, 0xad, 0xbe, 0xef};
    CHECK(capvault_append_custom(v, t + 8, "clipboard-meta", meta, sizeof meta), CAPVAULT_OK);

    /* While paused, events are dropped (and counted), not stored. */
    CHECK(capvault_pause(v, 60), CAPVAULT_OK);
    CHECK(capvault_append_mouse_move(v, t + 9, 1, 1), CAPVAULT_PAUSED);
    CHECK(capvault_resume(v), CAPVAULT_OK);
    CHECK(capvault_append_mouse_move(v, t + 10, 700, 500), CAPVAULT_OK);

    CHECK(capvault_flush(v), CAPVAULT_OK);

    char *status = NULL;
    CHECK(capvault_status_json(v, &status), CAPVAULT_OK);
    printf("status: %s\n", status);
    capvault_string_free(status);

    CHECK(capvault_rotate_key(v), CAPVAULT_OK);

    /* Seal and upload everything pending; acknowledge each bundle once stored. */
    int bundles = 0;
    for (;;) {
        capvault_bundle *b = NULL;
        CHECK(capvault_seal_next(v, recipient, 1 << 20, &b), CAPVAULT_OK);
        if (!b) break; /* nothing pending */
        size_t len = 0;
        const uint8_t *data = capvault_bundle_data(b, &len);
        const char *id = capvault_bundle_id(b);
        char path[4096];
        snprintf(path, sizeof path, "%s/bundle-%d.cvb", out_dir, ++bundles);
        if (!data || !id) {
            fprintf(stderr, "agent: bundle accessors: %s\n", capvault_last_error());
            capvault_bundle_free(b);
            capvault_close(v);
            return 1;
        }
        if (write_file(path, data, len) != 0) {
            fprintf(stderr, "agent: cannot write %s\n", path);
            capvault_bundle_free(b);
            capvault_close(v);
            return 1;
        }
        printf("bundle %s: %zu bytes -> %s\n", id, len, path);
        /* Without a collector_receipt_key option, acknowledging by id is enough. */
        rc = capvault_ack(v, id, NULL, 0);
        capvault_bundle_free(b);
        CHECK(rc, CAPVAULT_OK);
        if (bundles > 100) break;
    }
    printf("sealed %d bundle(s)\n", bundles);

    /* capvault_close flushes too, but returns nothing: flush first to know that
     * everything reached the disk. */
    CHECK(capvault_flush(v), CAPVAULT_OK);
    capvault_close(v);
    return bundles > 0 ? 0 : 1;
}
