/*
 * capvault_close from a C++ static destructor, which runs during exit(), after the
 * main thread's thread-local storage is released.
 *
 *   exit_static VAULT_DIR      (keychain from $CAPVAULT_KEYSTORE)
 *
 * Appends 3 mouse moves (ts 1, 2, 3; the last from the destructor), prints
 * "static: ok" from the destructor once the vault is closed, exits 0; 3 on a failure.
 */
/* capvault.h first, then the system's: the header declares nothing of libc that a
 * C++ standard header would declare again differently (pthread_atfork did). */
#include "capvault.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <pthread.h>
#include <unistd.h>

namespace {

[[noreturn]] void die(const char *what, capvault_result rc) {
    std::printf("static: %s returned %d (%s): %s\n", what, static_cast<int>(rc),
                capvault_result_str(rc), capvault_last_error());
    std::fflush(stdout);
    _exit(3);
}

struct Vault {
    capvault *v = nullptr;
    ~Vault() {
        capvault_result rc = capvault_append_mouse_move(v, 3, 30, 30);
        if (rc != CAPVAULT_OK) die("append", rc);
        rc = capvault_flush(v);
        if (rc != CAPVAULT_OK) die("flush", rc);
        if (capvault_flush(nullptr) != CAPVAULT_ERR_NULL_ARGUMENT || !*capvault_last_error())
            die("flush(NULL)", -1);
        capvault_close(v);
        std::printf("static: %s; ok\n", capvault_last_error());
        std::fflush(stdout);
    }
};

Vault vault;  // destroyed at exit

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *keystore = std::getenv("CAPVAULT_KEYSTORE");
    std::string options = std::string("{\"keystore\": \"") + (keystore ? keystore : "keyutils") + "\"}";
    capvault_result rc = capvault_open(argv[1], "alice", options.c_str(), &vault.v);
    if (rc != CAPVAULT_OK) die("open", rc);
    if ((rc = capvault_append_mouse_move(vault.v, 1, 10, 10)) != CAPVAULT_OK) die("append", rc);
    if ((rc = capvault_append_mouse_move(vault.v, 2, 20, 20)) != CAPVAULT_OK) die("append", rc);
    return 0;
}
