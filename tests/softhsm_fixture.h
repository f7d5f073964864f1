/* softhsm_fixture.h - throw-away SoftHSM tokens in a temporary directory, for unit and integration tests. */
#ifndef KMS_TEST_SOFTHSM_FIXTURE_H
#define KMS_TEST_SOFTHSM_FIXTURE_H

#include <limits.h>

#define KMS_TEST_LABEL_MAX 32 /* a PKCS#11 token label is 32 bytes */
#define KMS_TEST_PIN_HEX 32   /* 16 random bytes, hex */

/*
 * One temporary SoftHSM token directory. Every field is a NUL-terminated
 * string owned by the struct; nothing is heap-allocated.
 *
 * SoftHSM reads SOFTHSM2_CONF once, at its first C_Initialize, and the
 * tests never C_Finalize (hsm.h): one token directory per process. Check
 * runs each test in its own forked child (CK_FORK, the default), so create
 * the token in a checked fixture (tcase_add_checked_fixture), which runs in
 * that child.
 */
struct kms_test_token {
	char dir[PATH_MAX];  /* mkdtemp result, removed by destroy */
	char conf[PATH_MAX]; /* <dir>/softhsm2.conf, also in SOFTHSM2_CONF */
	char pin_path[PATH_MAX]; /* <dir>/pin: the user PIN, 0600, no newline */
	char module[PATH_MAX];	 /* $KMS_PKCS11_MODULE or the SoftHSM default */
	char label[KMS_TEST_LABEL_MAX + 1]; /* the first token's label */
	char pin[KMS_TEST_PIN_HEX + 1];	    /* user PIN, shared by all tokens */
	char so_pin[KMS_TEST_PIN_HEX + 1];  /* SO PIN, shared by all tokens */
};

/*
 * Makes a fresh directory under $TMPDIR (or /tmp), writes softhsm2.conf
 * there, points SOFTHSM2_CONF at it (setenv: call before other threads
 * start), draws random PINs and initializes a token labelled label.
 * Returns 0, or -1 with the reason on stderr (and nothing left on disk).
 */
int kms_test_token_create(struct kms_test_token *t, const char *label);

/*
 * Initializes one more token, labelled label, in the same directory and
 * with the same PINs, and points SOFTHSM2_CONF at t's config (again).
 * Call it before the module is first initialized in this process: SoftHSM
 * lists the tokens it found at C_Initialize.
 * Returns 0 or -1 (reason on stderr).
 */
int kms_test_token_add(struct kms_test_token *t, const char *label);

/*
 * Removes the directory and everything in it, unsets SOFTHSM2_CONF if it
 * still points there, and wipes the PINs from *t. Safe on a zeroed struct
 * and twice.
 */
void kms_test_token_destroy(struct kms_test_token *t);

/*
 * Removes dir and everything under it (nftw, symlinks not followed).
 * For a per-run directory: Check ends a failing test's child with _exit()
 * before its teardown, so a test binary that points TMPDIR at a directory
 * of its own and removes it at the end leaves nothing behind.
 */
void kms_test_rmtree(const char *dir);

#endif
