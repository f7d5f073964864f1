/* hsm.c - the PKCS#11 edge: module, token login, per-thread sessions, domain key, RFC 5649 master-key wrap, AES-GCM, random. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <p11-kit/pkcs11.h>
/*
 * p11-kit's header maps its lower-case member names onto the PKCS#11 ones
 * with macros and forgets to #undef these (p11-kit 0.24): left alone they
 * would silently rename any identifier of ours spelled the same.
 */
#undef iv_ptr
#undef iv_len
#undef iv_bits
#undef aad_ptr
#undef aad_len
#undef tag_bits

#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/hsm.h"
#include "kms/log.h"

#define TOKEN_LABEL_LEN 32 /* CK_TOKEN_INFO.label: 32 bytes, blank padded */
#define AES256_KEY_LEN 32
#define WRAPPED_MAX 64 /* room for C_WrapKey's output */
/* RFC 5649 section 4.1: 8-byte AIV block + the key padded to 8 bytes. */
#define WRAPPED_AES256_LEN (8 + AES256_KEY_LEN)
#define DECRYPT_STACK 512
#define AUDIT_LABEL_MAX 64
#define MASTER_KEY_LABEL "kms-master-key"

struct kms_hsm {
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	char label[TOKEN_LABEL_LEN + 1];
	/*
	 * The holder session owns every unwrapped master key: a PKCS#11
	 * session object dies with the session that made it. A session
	 * handle must not be used by two threads at once (PKCS#11 v2.40
	 * section 6.7.7), so every use of the holder takes holder_mu.
	 */
	pthread_mutex_t holder_mu;
	CK_SESSION_HANDLE holder;
};

struct kms_hsm_session {
	kms_hsm *hsm;
	CK_SESSION_HANDLE h;
};

/*
 * One PKCS#11 step that can be replayed on a fresh session: it returns the
 * first failing CK_RV and names the failing function in *fn.
 */
typedef CK_RV (*hsm_op)(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *arg,
			const char **fn);

static CK_BBOOL ck_true = CK_TRUE;
static CK_BBOOL ck_false = CK_FALSE;
static CK_OBJECT_CLASS class_secret = CKO_SECRET_KEY;
static CK_KEY_TYPE type_aes = CKK_AES;
static CK_ULONG aes256_len = AES256_KEY_LEN;

#define ATTR(t, p)                                                             \
	{                                                                      \
		(t), (void *)(p), sizeof(*(p))                                 \
	}
#define N_ATTRS(a) (sizeof(a) / sizeof((a)[0]))

/* The table is built from the names themselves: no name can be misspelt. */
#define RV(x)                                                                  \
	{                                                                      \
		(x), #x                                                        \
	}
static const struct {
	CK_RV rv;
	const char *name;
} rv_names[] = {
    RV(CKR_OK),
    RV(CKR_CANCEL),
    RV(CKR_HOST_MEMORY),
    RV(CKR_SLOT_ID_INVALID),
    RV(CKR_GENERAL_ERROR),
    RV(CKR_FUNCTION_FAILED),
    RV(CKR_ARGUMENTS_BAD),
    RV(CKR_CANT_LOCK),
    RV(CKR_ATTRIBUTE_READ_ONLY),
    RV(CKR_ATTRIBUTE_SENSITIVE),
    RV(CKR_ATTRIBUTE_TYPE_INVALID),
    RV(CKR_ATTRIBUTE_VALUE_INVALID),
    RV(CKR_ACTION_PROHIBITED),
    RV(CKR_DATA_INVALID),
    RV(CKR_DATA_LEN_RANGE),
    RV(CKR_DEVICE_ERROR),
    RV(CKR_DEVICE_MEMORY),
    RV(CKR_DEVICE_REMOVED),
    RV(CKR_ENCRYPTED_DATA_INVALID),
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
    RV(CKR_FUNCTION_CANCELED),
    RV(CKR_FUNCTION_NOT_SUPPORTED),
    RV(CKR_KEY_HANDLE_INVALID),
    RV(CKR_KEY_SIZE_RANGE),
    RV(CKR_KEY_TYPE_INCONSISTENT),
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
    RV(CKR_KEY_NOT_WRAPPABLE),
    RV(CKR_KEY_UNEXTRACTABLE),
    RV(CKR_MECHANISM_INVALID),
    RV(CKR_MECHANISM_PARAM_INVALID),
    RV(CKR_OBJECT_HANDLE_INVALID),
    RV(CKR_OPERATION_ACTIVE),
    RV(CKR_OPERATION_NOT_INITIALIZED),
    RV(CKR_PIN_INCORRECT),
    RV(CKR_PIN_INVALID),
    RV(CKR_PIN_LEN_RANGE),
    RV(CKR_PIN_EXPIRED),
    RV(CKR_PIN_LOCKED),
    RV(CKR_SESSION_CLOSED),
    RV(CKR_SESSION_COUNT),
    RV(CKR_SESSION_HANDLE_INVALID),
    RV(CKR_SESSION_READ_ONLY),
    RV(CKR_SESSION_EXISTS),
    RV(CKR_SESSION_READ_ONLY_EXISTS),
    RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
    RV(CKR_SIGNATURE_INVALID),
    RV(CKR_SIGNATURE_LEN_RANGE),
    RV(CKR_TEMPLATE_INCOMPLETE),
    RV(CKR_TEMPLATE_INCONSISTENT),
    RV(CKR_TOKEN_NOT_PRESENT),
    RV(CKR_TOKEN_NOT_RECOGNIZED),
    RV(CKR_TOKEN_WRITE_PROTECTED),
    RV(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    RV(CKR_USER_ALREADY_LOGGED_IN),
    RV(CKR_USER_NOT_LOGGED_IN),
    RV(CKR_USER_PIN_NOT_INITIALIZED),
    RV(CKR_USER_TYPE_INVALID),
    RV(CKR_USER_TOO_MANY_TYPES),
    RV(CKR_WRAPPED_KEY_INVALID),
    RV(CKR_WRAPPED_KEY_LEN_RANGE),
    RV(CKR_WRAPPING_KEY_HANDLE_INVALID),
    RV(CKR_WRAPPING_KEY_SIZE_RANGE),
    RV(CKR_RANDOM_SEED_NOT_SUPPORTED),
    RV(CKR_RANDOM_NO_RNG),
    RV(CKR_BUFFER_TOO_SMALL),
    RV(CKR_CRYPTOKI_NOT_INITIALIZED),
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    RV(CKR_MUTEX_BAD),
    RV(CKR_MUTEX_NOT_LOCKED),
    RV(CKR_LIBRARY_LOAD_FAILED),
    RV(CKR_PIN_TOO_WEAK),
    RV(CKR_FUNCTION_REJECTED),
};
#undef RV

const char *kms_hsm_rv_name(unsigned long rv)
{
	/* Per thread, so that two threads naming unknown values do not race. */
	static _Thread_local char unknown[32];

	for (size_t i = 0; i < N_ATTRS(rv_names); i++)
		if (rv_names[i].rv == rv)
			return rv_names[i].name;
	snprintf(unknown, sizeof(unknown), "CKR_0x%lx", rv);
	return unknown;
}

static int hsm_fail(kms_err *err, const char *fn, CK_RV rv)
{
	return kms_errf(err, KMS_ERR_HSM, "%s: %s (0x%lx)", fn,
			kms_hsm_rv_name(rv), rv);
}

/*
 * The return values after which the session, not the request, is at fault:
 * reopening the session may cure them (PKCS#11 v2.40 section 5.1).
 */
static int session_broken(CK_RV rv)
{
	switch (rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_DEVICE_ERROR:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_USER_NOT_LOGGED_IN:
		return 1;
	default:
		return 0;
	}
}

/*
 * Opens a session on the token and checks that it is logged in as the user.
 * The login belongs to the application, not the session (PKCS#11 v2.40
 * section 5.6): it holds while any session of the process stays open, the
 * holder session in particular. The PIN is not kept (hsm.h), so a session
 * that comes back logged out cannot be repaired here: KMS_ERR_UNAVAILABLE.
 */
static int session_start(kms_hsm *hsm, CK_FLAGS flags, CK_SESSION_HANDLE *out,
			 kms_err *err)
{
	CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
	CK_SESSION_INFO info;
	CK_RV rv;
	int rc;

	rv = hsm->f->C_OpenSession(hsm->slot, flags, NULL, NULL, &h);
	if (rv != CKR_OK)
		return kms_errf(
		    err, session_broken(rv) ? KMS_ERR_UNAVAILABLE : KMS_ERR_HSM,
		    "C_OpenSession: %s (0x%lx)", kms_hsm_rv_name(rv), rv);
	rv = hsm->f->C_GetSessionInfo(h, &info);
	if (rv != CKR_OK) {
		rc = hsm_fail(err, "C_GetSessionInfo", rv);
		goto fail;
	}
	if (info.state != CKS_RO_USER_FUNCTIONS &&
	    info.state != CKS_RW_USER_FUNCTIONS) {
		rc = kms_errf(err, KMS_ERR_UNAVAILABLE,
			      "token '%s' is no longer logged in (every "
			      "session of the process was closed); reopen the "
			      "HSM",
			      hsm->label);
		goto fail;
	}
	*out = h;
	return KMS_OK;
fail:
	hsm->f->C_CloseSession(h);
	return rc;
}

/*
 * Runs op on *h. If the session broke, reopens it once and replays op; a
 * second break, or a session that cannot be reopened, is
 * KMS_ERR_UNAVAILABLE. Any other failure is KMS_ERR_HSM naming the call,
 * with the CK_RV in *rv_out so that the caller may give it a meaning.
 */
static int run_op(kms_hsm *hsm, CK_SESSION_HANDLE *h, CK_FLAGS flags, hsm_op op,
		  void *arg, CK_RV *rv_out, kms_err *err)
{
	const char *fn = "PKCS#11";
	kms_err reopen_err;
	CK_RV rv;
	int rc;

	*rv_out = CKR_OK;
	rv = op(hsm->f, *h, arg, &fn);
	if (rv == CKR_OK)
		return KMS_OK;
	*rv_out = rv;
	if (!session_broken(rv))
		return hsm_fail(err, fn, rv);

	KMS_LOG_W("HSM session on token '%s' broke (%s: %s); reopening it",
		  hsm->label, fn, kms_hsm_rv_name(rv));
	/*
	 * A handle that is already invalid is not closed: the module may have
	 * given the same number to another thread's new session meanwhile.
	 */
	if (*h != CK_INVALID_HANDLE && rv != CKR_SESSION_HANDLE_INVALID &&
	    rv != CKR_SESSION_CLOSED)
		hsm->f->C_CloseSession(*h);
	*h = CK_INVALID_HANDLE;
	kms_err_clear(&reopen_err);
	rc = session_start(hsm, flags, h, &reopen_err);
	if (rc != KMS_OK)
		return kms_errf(
		    err, KMS_ERR_UNAVAILABLE,
		    "HSM session lost (%s: %s) and not reopened: %s", fn,
		    kms_hsm_rv_name(rv), reopen_err.msg);

	rv = op(hsm->f, *h, arg, &fn);
	*rv_out = rv;
	if (rv == CKR_OK)
		return KMS_OK;
	if (session_broken(rv))
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"%s: %s (0x%lx) again after reopening the HSM "
				"session",
				fn, kms_hsm_rv_name(rv), rv);
	return hsm_fail(err, fn, rv);
}

/* Holder-session variant of run_op; the caller holds holder_mu. */
static int run_holder(kms_hsm *hsm, hsm_op op, void *arg, CK_RV *rv_out,
		      kms_err *err)
{
	return run_op(hsm, &hsm->holder, CKF_SERIAL_SESSION | CKF_RW_SESSION,
		      op, arg, rv_out, err);
}

/*
 * Worker sessions are read-only: they never need to create or change a
 * token object, and a read-only session cannot (PKCS#11 v2.40 section 5.6).
 */
static int run_session(kms_hsm_session *s, hsm_op op, void *arg, CK_RV *rv_out,
		       kms_err *err)
{
	return run_op(s->hsm, &s->h, CKF_SERIAL_SESSION, op, arg, rv_out, err);
}

/* Token labels are 32 bytes padded with blanks, not NUL terminated. */
static int label_matches(const unsigned char field[TOKEN_LABEL_LEN],
			 const char *label)
{
	size_t n = strlen(label);

	if (n > TOKEN_LABEL_LEN || memcmp(field, label, n) != 0)
		return 0;
	for (size_t i = n; i < TOKEN_LABEL_LEN; i++)
		if (field[i] != ' ')
			return 0;
	return 1;
}

static int find_slot(CK_FUNCTION_LIST *f, const char *label, CK_SLOT_ID *out,
		     kms_err *err)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0, found = 0;
	CK_TOKEN_INFO info;
	CK_RV rv;
	int rc;

	/* The slot count can grow between the two calls; ask until it fits. */
	for (;;) {
		rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
		if (rv != CKR_OK) {
			rc = hsm_fail(err, "C_GetSlotList", rv);
			goto out;
		}
		kms_free(slots);
		slots = kms_calloc(n, sizeof(*slots));
		if (slots == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM,
				      "no memory for %lu "
				      "PKCS#11 slots",
				      n);
			goto out;
		}
		rv = f->C_GetSlotList(CK_TRUE, slots, &n);
		if (rv == CKR_OK)
			break;
		if (rv != CKR_BUFFER_TOO_SMALL) {
			rc = hsm_fail(err, "C_GetSlotList", rv);
			goto out;
		}
	}
	for (CK_ULONG i = 0; i < n; i++) {
		rv = f->C_GetTokenInfo(slots[i], &info);
		if (rv != CKR_OK) {
			KMS_LOG_D("C_GetTokenInfo(slot %lu): %s", slots[i],
				  kms_hsm_rv_name(rv));
			continue;
		}
		if (!(info.flags & CKF_TOKEN_INITIALIZED) ||
		    !label_matches(info.label, label))
			continue;
		if (found++ == 0)
			*out = slots[i];
	}
	if (found == 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "no token labelled '%s'",
			      label);
		goto out;
	}
	/* Two roots of trust under one name: refuse rather than guess. */
	if (found > 1) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "%lu tokens labelled '%s'",
			      found, label);
		goto out;
	}
	rc = KMS_OK;
out:
	kms_free(slots);
	return rc;
}

int kms_hsm_open(const char *module_path, const char *token_label,
		 const char *pin, kms_hsm **out, kms_err *err)
{
	CK_C_INITIALIZE_ARGS init_args;
	CK_C_GetFunctionList get_list;
	CK_FUNCTION_LIST *f = NULL;
	CK_SESSION_HANDLE holder = CK_INVALID_HANDLE;
	kms_hsm *hsm = NULL;
	void *dl;
	CK_RV rv;
	int rc;

	if (module_path == NULL || token_label == NULL || pin == NULL ||
	    out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_open: missing module, label or PIN");
	*out = NULL;

	/*
	 * The module stays loaded for the life of the process, like its
	 * initialization (hsm.h: never C_Finalize): unloading it would pull
	 * it from under the TLS engine and under the module's own state.
	 */
	dl = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
	if (dl == NULL)
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot load PKCS#11 module %s: %s",
				module_path, dlerror());
	get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (get_list == NULL) {
		/* Not a PKCS#11 module, never initialized: safe to unload. */
		dlclose(dl);
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot load PKCS#11 module %s: no "
				"C_GetFunctionList",
				module_path);
	}
	rv = get_list(&f);
	if (rv != CKR_OK || f == NULL) {
		dlclose(dl);
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot load PKCS#11 module %s: "
				"C_GetFunctionList: %s (0x%lx)",
				module_path, kms_hsm_rv_name(rv), rv);
	}

	/*
	 * CKF_OS_LOCKING_OK: our threads call the module concurrently, each on
	 * its own session (PKCS#11 v2.40 section 5.4). Another user in this
	 * process (libp11's engine) may have initialized it first.
	 */
	memset(&init_args, 0, sizeof(init_args));
	init_args.flags = CKF_OS_LOCKING_OK;
	rv = f->C_Initialize(&init_args);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot load PKCS#11 module %s: C_Initialize: "
				"%s (0x%lx)",
				module_path, kms_hsm_rv_name(rv), rv);

	hsm = kms_calloc(1, sizeof(*hsm));
	if (hsm == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory for the HSM");
	hsm->f = f;
	snprintf(hsm->label, sizeof(hsm->label), "%s", token_label);
	if (pthread_mutex_init(&hsm->holder_mu, NULL) != 0) {
		kms_free(hsm);
		return kms_errf(err, KMS_ERR_INTERNAL,
				"cannot create the HSM holder mutex");
	}

	KMS_TRY_GOTO(rc, find_slot(f, token_label, &hsm->slot, err), fail);
	rv = f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
			      NULL, NULL, &holder);
	if (rv != CKR_OK) {
		rc = hsm_fail(err, "C_OpenSession", rv);
		goto fail;
	}
	rv = f->C_Login(holder, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
	if (rv == CKR_PIN_INCORRECT) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "wrong PIN for token '%s'",
			      token_label);
		goto fail;
	}
	if (rv == CKR_PIN_LOCKED) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "the user PIN of token '%s' is locked",
			      token_label);
		goto fail;
	}
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		rc = hsm_fail(err, "C_Login", rv);
		goto fail;
	}
	hsm->holder = holder;
	*out = hsm;
	return KMS_OK;
fail:
	if (holder != CK_INVALID_HANDLE)
		f->C_CloseSession(holder);
	pthread_mutex_destroy(&hsm->holder_mu);
	kms_free(hsm);
	return rc;
}

void kms_hsm_close(kms_hsm *hsm)
{
	if (hsm == NULL)
		return;
	/*
	 * Closing the holder destroys every master key unwrapped into it.
	 * No C_Logout and no C_Finalize: the login and the module may be
	 * shared with the TLS engine; the last session closing logs out.
	 */
	if (hsm->holder != CK_INVALID_HANDLE)
		hsm->f->C_CloseSession(hsm->holder);
	pthread_mutex_destroy(&hsm->holder_mu);
	kms_free(hsm);
}

/*
 * Thread-safe without a lock of ours: it only reads fields of hsm that are
 * fixed after kms_hsm_open, and the module serializes itself
 * (CKF_OS_LOCKING_OK).
 */
int kms_hsm_session_open(kms_hsm *hsm, kms_hsm_session **out, kms_err *err)
{
	kms_hsm_session *s;
	int rc;

	if (hsm == NULL || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_session_open: no HSM");
	s = kms_calloc(1, sizeof(*s));
	if (s == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"no memory for an HSM session");
	s->hsm = hsm;
	rc = session_start(hsm, CKF_SERIAL_SESSION, &s->h, err);
	if (rc != KMS_OK) {
		kms_free(s);
		return rc;
	}
	*out = s;
	return KMS_OK;
}

void kms_hsm_session_close(kms_hsm_session *s)
{
	if (s == NULL)
		return;
	if (s->h != CK_INVALID_HANDLE)
		s->hsm->f->C_CloseSession(s->h);
	kms_free(s);
}

struct random_arg {
	uint8_t *out;
	size_t n;
};

static CK_RV op_random(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
		       const char **fn)
{
	struct random_arg *a = p;

	*fn = "C_GenerateRandom";
	return f->C_GenerateRandom(h, a->out, a->n);
}

int kms_hsm_random(kms_hsm_session *s, uint8_t *out, size_t n, kms_err *err)
{
	struct random_arg a = {out, n};
	CK_RV rv;

	if (s == NULL || (out == NULL && n > 0))
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_random: no session or buffer");
	if (n == 0)
		return KMS_OK;
	return run_session(s, op_random, &a, &rv, err);
}

struct find_arg {
	CK_ATTRIBUTE *tmpl;
	CK_ULONG n_tmpl;
	CK_OBJECT_HANDLE *found; /* kms_realloc'd */
	CK_ULONG n_found;
	int nomem;
};

/*
 * Collects every match before looking at any: an active find operation
 * blocks the session for other operations in some modules.
 */
static CK_RV op_find(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
		     const char **fn)
{
	struct find_arg *a = p;
	CK_OBJECT_HANDLE batch[32];
	CK_ULONG got;
	CK_RV rv, frv;

	a->n_found = 0;
	*fn = "C_FindObjectsInit";
	rv = f->C_FindObjectsInit(h, a->tmpl, a->n_tmpl);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_FindObjects";
	for (;;) {
		CK_OBJECT_HANDLE *grown;

		rv = f->C_FindObjects(h, batch, N_ATTRS(batch), &got);
		if (rv != CKR_OK || got == 0)
			break;
		grown =
		    kms_realloc(a->found, (a->n_found + got) * sizeof(*grown));
		if (grown == NULL) {
			a->nomem = 1;
			rv = CKR_HOST_MEMORY;
			break;
		}
		a->found = grown;
		memcpy(a->found + a->n_found, batch, got * sizeof(*batch));
		a->n_found += got;
	}
	/* Always end the search, or the session stays busy with it. */
	frv = f->C_FindObjectsFinal(h);
	if (rv == CKR_OK && frv != CKR_OK) {
		*fn = "C_FindObjectsFinal";
		rv = frv;
	}
	return rv;
}

struct generate_arg {
	CK_MECHANISM *mech;
	CK_ATTRIBUTE *tmpl;
	CK_ULONG n_tmpl;
	CK_OBJECT_HANDLE key;
};

static CK_RV op_generate(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
			 const char **fn)
{
	struct generate_arg *a = p;

	*fn = "C_GenerateKey";
	return f->C_GenerateKey(h, a->mech, a->tmpl, a->n_tmpl, &a->key);
}

/* Destroys a session object of a failed step; it dies with h anyway. */
static void destroy_quietly(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
			    const char *what)
{
	CK_RV rv;

	if (obj == CK_INVALID_HANDLE)
		return;
	rv = f->C_DestroyObject(h, obj);
	if (rv != CKR_OK)
		KMS_LOG_W("C_DestroyObject(%s): %s", what, kms_hsm_rv_name(rv));
}

static int key_value_len(kms_hsm *hsm, CK_SESSION_HANDLE h,
			 CK_OBJECT_HANDLE key, CK_ULONG *len, kms_err *err)
{
	CK_ATTRIBUTE a = ATTR(CKA_VALUE_LEN, len);
	CK_RV rv;

	rv = hsm->f->C_GetAttributeValue(h, key, &a, 1);
	if (rv != CKR_OK)
		return hsm_fail(err, "C_GetAttributeValue(CKA_VALUE_LEN)", rv);
	return KMS_OK;
}

/*
 * Runs op, which unwraps a key into *key in the holder session, and keeps
 * that key only if it is AES-256 where the module reports the size
 * (SoftHSM 2.6.1 leaves CKA_VALUE_LEN 0 on an unwrapped key and refuses
 * it in an unwrap template: there the callers' blob lengths must do). A
 * failed unwrap gets prefix; a key of another size is destroyed again.
 * The caller holds holder_mu.
 */
static int unwrap_aes256(kms_hsm *hsm, hsm_op op, void *arg, CK_OBJECT_HANDLE *key,
			 const char *prefix, kms_err *err)
{
	CK_ULONG key_len = 0;
	CK_RV rv;
	int rc;

	rc = run_holder(hsm, op, arg, &rv, err);
	if (rc != KMS_OK) {
		if (rc == KMS_ERR_HSM)
			kms_err_prefix(err, prefix);
		return rc;
	}
	rc = key_value_len(hsm, hsm->holder, *key, &key_len, err);
	if (rc == KMS_OK && key_len != 0 && key_len != AES256_KEY_LEN)
		rc = kms_errf(err, KMS_ERR_HSM, "%s: it is a %lu-byte key, not AES-256", prefix,
			      key_len);
	if (rc != KMS_OK) {
		destroy_quietly(hsm->f, hsm->holder, *key, "rejected unwrapped key");
		*key = CK_INVALID_HANDLE;
	}
	return rc;
}

/*
 * The size of a domain key. CKA_VALUE_LEN where the module recorded it;
 * SoftHSM 2.6.1 leaves it 0 on a key made by C_UnwrapKey (an installed
 * domain key, kms_hsm_domain_key_install), so then the size comes from a
 * C_WrapKey size query of the key under itself with CKM_AES_KEY_WRAP_PAD:
 * nothing is wrapped, and RFC 5649 section 4.1 gives 8 bytes plus the key
 * padded to 8 bytes, which tells the AES key sizes 16, 24 and 32 apart.
 * A domain key may wrap and is extractable (hsm.h), so the query is allowed.
 * The caller holds holder_mu.
 */
static int dk_value_len(kms_hsm *hsm, CK_OBJECT_HANDLE key, CK_ULONG *len,
			kms_err *err)
{
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_ULONG wrapped_len = 0;
	CK_RV rv;

	KMS_TRY(key_value_len(hsm, hsm->holder, key, len, err));
	if (*len != 0)
		return KMS_OK;
	rv = hsm->f->C_WrapKey(hsm->holder, &kwp, key, key, NULL, &wrapped_len);
	if (rv != CKR_OK)
		return kms_errf(
		    err, KMS_ERR_HSM,
		    "C_WrapKey (size of the domain key): %s (0x%lx)",
		    kms_hsm_rv_name(rv), rv);
	*len = wrapped_len > 8 ? wrapped_len - 8 : 0;
	return KMS_OK;
}

#define DK_TMPL_MAX 20

/*
 * What every key the domain key unwraps must be: its CKA_UNWRAP_TEMPLATE
 * (PKCS#11 v2.40, secret key objects). Master keys and the domain-key probe
 * come out of op_unwrap, which builds its template from this very array, so
 * the two cannot drift apart. SoftHSM 2.6.1 enforces it strictly
 * (SoftHSM::C_UnwrapKey): the caller's template must name each of these
 * attributes with the same value, or C_UnwrapKey fails with
 * CKR_TEMPLATE_INCONSISTENT before anything is unwrapped; a template that
 * leaves one out fails too, where the specification would fill it in.
 * Beyond sensitive and non-extractable, the unwrapped key may not wrap,
 * unwrap or derive: it is a master key, which only encrypts and decrypts.
 */
static CK_ATTRIBUTE unwrapped_key_rules[] = {
    ATTR(CKA_SENSITIVE, &ck_true), ATTR(CKA_EXTRACTABLE, &ck_false),
    ATTR(CKA_WRAP, &ck_false),	   ATTR(CKA_UNWRAP, &ck_false),
    ATTR(CKA_DERIVE, &ck_false),
};

/*
 * The attributes of a domain key, for C_GenerateKey (generate: with
 * CKA_VALUE_LEN) and for C_UnwrapKey (kms_hsm_domain_key_install). It only
 * wraps and unwraps master keys (RFC 5649); it never encrypts data.
 * CKA_SENSITIVE keeps its value from ever being read in plaintext (PKCS#11
 * v2.40, secret key objects); CKA_EXTRACTABLE lets C_WrapKey move it,
 * wrapped, to a joining node's transport key (hsm.h). CKA_UNWRAP_TEMPLATE
 * (unwrapped_key_rules) keeps whatever it unwraps inside the HSM.
 * CKA_MODIFIABLE=FALSE: no usage flag can be switched on later (say
 * CKA_DECRYPT, which would open every wrapped master key), and the unwrap
 * template cannot be changed; C_SetAttributeValue then fails with
 * CKR_ACTION_PROHIBITED.
 *
 * CKA_MODIFIABLE=FALSE must come last. SoftHSM 2.6.1 applies a C_UnwrapKey
 * (and C_CopyObject) template in order and refuses every attribute after
 * it with CKR_ATTRIBUTE_READ_ONLY (P11Attribute::update: only C_GenerateKey
 * and C_CreateObject may go on writing a non-modifiable object). Measured
 * on 2.6.1 for an installed domain key, with the user PIN only:
 *  - C_UnwrapKey with CKA_MODIFIABLE=FALSE last: CKR_OK, and the key is
 *    non-modifiable and carries the unwrap template. That is what
 *    kms_hsm_domain_key_install does.
 *  - CKA_MODIFIABLE=FALSE anywhere earlier: CKR_ATTRIBUTE_READ_ONLY, and
 *    SoftHSM leaves a half-made token object behind (SoftHSM::CreateObject
 *    does not remove it), with whatever attributes came before.
 *  - unwrap as a session object, then C_CopyObject to the token with
 *    {CKA_TOKEN=TRUE, CKA_MODIFIABLE=FALSE}: works too (in that order), but
 *    takes a second copy of the key and one more step that can fail halfway.
 *  - C_SetAttributeValue(CKA_MODIFIABLE=FALSE) afterwards:
 *    CKR_ATTRIBUTE_READ_ONLY (it may change only in C_CopyObject).
 * A module that refuses CKA_MODIFIABLE in an unwrap template fails the
 * install with that CK_RV; there is no silent fallback to a modifiable key.
 *
 * Tokens made by an older kmsd keep their domain key as it is: no unwrap
 * template, and (installed on a module that refused CKA_MODIFIABLE) perhaps
 * modifiable. That is accepted and not migrated: migrating would mean
 * wrapping the key out and back in. kms_hsm_domain_key says so in the log.
 * Returns the count.
 */
static CK_ULONG dk_template(CK_ATTRIBUTE t[DK_TMPL_MAX], const char *label,
			    int generate)
{
	CK_ULONG n = 0;

	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &class_secret);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &type_aes);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_TOKEN, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_PRIVATE, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_SENSITIVE, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_EXTRACTABLE, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_WRAP, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_UNWRAP, &ck_true);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_ENCRYPT, &ck_false);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_DECRYPT, &ck_false);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_SIGN, &ck_false);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_VERIFY, &ck_false);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_DERIVE, &ck_false);
	t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP_TEMPLATE, unwrapped_key_rules,
				sizeof(unwrapped_key_rules)};
	/* SoftHSM 2.6.1 refuses CKA_VALUE_LEN in an unwrap template. */
	if (generate)
		t[n++] = (CK_ATTRIBUTE)ATTR(CKA_VALUE_LEN, &aes256_len);
	t[n++] = (CK_ATTRIBUTE)ATTR(CKA_MODIFIABLE, &ck_false);
	return n;
}

/*
 * Logs a domain key that lacks what dk_template gives a new one: a key
 * made by an older kmsd, kept as it is (dk_template). The caller holds
 * holder_mu.
 */
static void dk_warn_if_old(kms_hsm *hsm, CK_OBJECT_HANDLE key,
			   const char *label)
{
	CK_BBOOL modifiable = CK_TRUE;
	CK_ATTRIBUTE a[] = {
	    ATTR(CKA_MODIFIABLE, &modifiable),
	    {CKA_UNWRAP_TEMPLATE, NULL, 0},
	};
	CK_RV rv;

	rv = hsm->f->C_GetAttributeValue(hsm->holder, key, a, N_ATTRS(a));
	if (rv != CKR_OK) {
		KMS_LOG_W("domain key '%s' on token '%s': cannot read "
			  "CKA_MODIFIABLE and CKA_UNWRAP_TEMPLATE: %s",
			  label, hsm->label, kms_hsm_rv_name(rv));
		return;
	}
	if (modifiable == CK_FALSE && a[1].ulValueLen != 0)
		return;
	KMS_LOG_W("domain key '%s' on token '%s' was made by an older kmsd "
		  "(%s, %s unwrap template); it is used as it is",
		  label, hsm->label,
		  modifiable != CK_FALSE ? "modifiable" : "not modifiable",
		  a[1].ulValueLen == 0 ? "no" : "with an");
}

int kms_hsm_domain_key(kms_hsm *hsm, const char *label, int create,
		       kms_hsm_key *out, kms_err *err)
{
	CK_ATTRIBUTE find_tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_true),
	    {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
	};
	CK_ATTRIBUTE gen_tmpl[DK_TMPL_MAX];
	CK_MECHANISM gen_mech = {CKM_AES_KEY_GEN, NULL, 0};
	struct find_arg fa = {find_tmpl, N_ATTRS(find_tmpl), NULL, 0, 0};
	struct generate_arg ga = {&gen_mech, gen_tmpl, 0, 0};
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG len = 0;
	CK_RV rv;
	int rc;

	if (hsm == NULL || label == NULL || label[0] == '\0' || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_domain_key: no HSM or label");
	ga.n_tmpl = dk_template(gen_tmpl, label, 1);
	/* Find and create under one lock, so two threads make one key. */
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_find, &fa, &rv, err);
	if (rc != KMS_OK) {
		if (fa.nomem)
			rc = kms_errf(err, KMS_ERR_NOMEM,
				      "no memory to search the token");
		goto out;
	}
	if (fa.n_found > 1) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "%lu domain keys labelled '%s' on token '%s'",
			      fa.n_found, label, hsm->label);
		goto out;
	}
	if (fa.n_found == 1) {
		key = fa.found[0];
	} else if (create) {
		KMS_TRY_GOTO(rc, run_holder(hsm, op_generate, &ga, &rv, err),
			     out);
		key = ga.key;
		KMS_LOG_I("created domain key '%s' on token '%s'", label,
			  hsm->label);
	} else {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND,
			      "no domain key labelled '%s' on token '%s'",
			      label, hsm->label);
		goto out;
	}
	KMS_TRY_GOTO(rc, dk_value_len(hsm, key, &len, err), out);
	if (len != AES256_KEY_LEN) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "domain key '%s' is AES-%lu, not AES-256", label,
			      len * 8);
		goto out;
	}
	if (fa.n_found == 1)
		dk_warn_if_old(hsm, key, label);
	*out = key;
	rc = KMS_OK;
out:
	pthread_mutex_unlock(&hsm->holder_mu);
	kms_free(fa.found);
	return rc;
}

struct wrap_arg {
	CK_OBJECT_HANDLE dk;
	uint8_t wrapped[WRAPPED_MAX];
	CK_ULONG wrapped_len;
};

static CK_RV op_master_create(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
			      const char **fn)
{
	struct wrap_arg *a = p;
	/*
	 * Sensitive, so its value is never readable; extractable only so that
	 * C_WrapKey may take it out under the domain key; no usage at all,
	 * since this copy is destroyed right after wrapping.
	 */
	CK_ATTRIBUTE tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),   ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_VALUE_LEN, &aes256_len), ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),      ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_true),  ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),     ATTR(CKA_WRAP, &ck_false),
	    ATTR(CKA_UNWRAP, &ck_false),      ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),      ATTR(CKA_DERIVE, &ck_false),
	};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	/* RFC 5649 with its default alternative IV (no parameter). */
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_RV rv, drv;

	*fn = "C_GenerateKey";
	rv = f->C_GenerateKey(h, &gen, tmpl, N_ATTRS(tmpl), &key);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_WrapKey";
	a->wrapped_len = sizeof(a->wrapped);
	rv = f->C_WrapKey(h, &kwp, a->dk, key, a->wrapped, &a->wrapped_len);
	drv = f->C_DestroyObject(h, key);
	if (drv != CKR_OK)
		/* It dies with the session anyway; it is sensitive. */
		KMS_LOG_W("C_DestroyObject of a new master key: %s",
			  kms_hsm_rv_name(drv));
	return rv;
}

int kms_hsm_master_key_create(kms_hsm_session *s, kms_hsm_key dk,
			      kms_buf *wrapped, kms_err *err)
{
	struct wrap_arg a;
	CK_RV rv;

	if (s == NULL || wrapped == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_master_key_create: no session or "
				"output");
	memset(&a, 0, sizeof(a));
	a.dk = dk;
	KMS_TRY(run_session(s, op_master_create, &a, &rv, err));
	wrapped->data = kms_malloc(a.wrapped_len);
	if (wrapped->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"no memory for a wrapped master key");
	memcpy(wrapped->data, a.wrapped, a.wrapped_len);
	wrapped->len = a.wrapped_len;
	return KMS_OK;
}

struct unwrap_arg {
	CK_OBJECT_HANDLE dk;
	const uint8_t *blob;
	size_t len;
	CK_OBJECT_HANDLE key;
};

static CK_RV op_unwrap(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
		       const char **fn)
{
	struct unwrap_arg *a = p;
	/*
	 * A session object (kept in memory, ~2.8x faster than a token object
	 * in SoftHSM) that only encrypts and decrypts, and can never leave
	 * the HSM again, not even wrapped: the rest of the template is the
	 * domain key's CKA_UNWRAP_TEMPLATE (unwrapped_key_rules), which the
	 * module checks against this one.
	 *
	 * CKA_PRIVATE=FALSE: a session object is visible to this process's
	 * sessions only, which are all logged in, so the flag guards nothing
	 * here. SoftHSM, though, keeps a private object's value encrypted
	 * under the token key and decrypts it (AES-CBC, under one global
	 * mutex) in every C_EncryptInit/C_DecryptInit: that was more than
	 * half of a decrypt (docs/PERFORMANCE.md, "SoftHSM's private
	 * objects"). The value stays sensitive and non-extractable.
	 */
	CK_ATTRIBUTE usage[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_false),
	    ATTR(CKA_ENCRYPT, &ck_true),
	    ATTR(CKA_DECRYPT, &ck_true),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    {CKA_LABEL, (void *)MASTER_KEY_LABEL, sizeof(MASTER_KEY_LABEL) - 1},
	};
	CK_ATTRIBUTE tmpl[N_ATTRS(usage) + N_ATTRS(unwrapped_key_rules)];
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};

	memcpy(tmpl, usage, sizeof(usage));
	memcpy(tmpl + N_ATTRS(usage), unwrapped_key_rules,
	       sizeof(unwrapped_key_rules));
	*fn = "C_UnwrapKey";
	return f->C_UnwrapKey(h, &kwp, a->dk, (CK_BYTE *)a->blob, a->len, tmpl,
			      N_ATTRS(tmpl), &a->key);
}

int kms_hsm_master_key_unwrap(kms_hsm *hsm, kms_hsm_key dk,
			      const uint8_t *wrapped, size_t len,
			      kms_hsm_key *out, kms_err *err)
{
	struct unwrap_arg a = {dk, wrapped, len, CK_INVALID_HANDLE};
	int rc;

	if (hsm == NULL || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_master_key_unwrap: no HSM or output");
	if (wrapped == NULL || len == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"cannot unwrap master key: empty blob");
	/*
	 * SoftHSM 2.6.1 refuses CKA_VALUE_LEN in an unwrap template
	 * (CKR_ATTRIBUTE_READ_ONLY) and reports 0 for it afterwards, so the
	 * key size is pinned here: only a 25..32-byte key wraps to 40 bytes,
	 * and of those only 32 is an AES key size.
	 */
	if (len != WRAPPED_AES256_LEN)
		return kms_errf(err, KMS_ERR_HSM,
				"cannot unwrap master key: a wrapped AES-256 "
				"key is %d bytes (RFC 5649), not %zu",
				WRAPPED_AES256_LEN, len);
	/*
	 * RFC 5649 section 3 integrity check: a wrong domain key and a
	 * tampered blob look the same, and must.
	 */
	pthread_mutex_lock(&hsm->holder_mu);
	rc = unwrap_aes256(hsm, op_unwrap, &a, &a.key, "cannot unwrap master key", err);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rc == KMS_OK)
		*out = a.key;
	return rc;
}

void kms_hsm_key_destroy(kms_hsm *hsm, kms_hsm_key key)
{
	CK_RV rv;

	if (hsm == NULL || key == CK_INVALID_HANDLE)
		return;
	pthread_mutex_lock(&hsm->holder_mu);
	rv = hsm->f->C_DestroyObject(hsm->holder, key);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rv != CKR_OK)
		KMS_LOG_W("C_DestroyObject(key %lu): %s", key,
			  kms_hsm_rv_name(rv));
}

struct gcm_arg {
	CK_OBJECT_HANDLE key;
	const uint8_t *iv;
	const uint8_t *aad;
	size_t aad_len;
	const uint8_t *in;
	size_t in_len;
	uint8_t *out;
	CK_ULONG out_len; /* capacity in, length out */
	int decrypt;
	int at_decrypt; /* the failure, if any, came from C_Decrypt itself */
};

/*
 * NIST SP 800-38D: 96-bit IV (section 8.2), 128-bit tag appended to the
 * ciphertext (PKCS#11 v2.40 CKM_AES_GCM).
 */
static CK_RV op_gcm(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
		    const char **fn)
{
	struct gcm_arg *a = p;
	CK_GCM_PARAMS params;
	CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof(params)};
	CK_ULONG cap = a->out_len;
	CK_RV rv;

	a->at_decrypt = 0;
	memset(&params, 0, sizeof(params));
	params.pIv = (CK_BYTE *)a->iv;
	params.ulIvLen = KMS_GCM_IV_LEN;
	params.ulIvBits = KMS_GCM_IV_LEN * 8;
	params.pAAD = (CK_BYTE *)a->aad;
	params.ulAADLen = a->aad_len;
	params.ulTagBits = KMS_GCM_TAG_LEN * 8;
	if (a->decrypt) {
		*fn = "C_DecryptInit";
		rv = f->C_DecryptInit(h, &mech, a->key);
		if (rv != CKR_OK)
			return rv;
		*fn = "C_Decrypt";
		a->at_decrypt = 1;
		return f->C_Decrypt(h, (CK_BYTE *)a->in, a->in_len, a->out,
				    &a->out_len);
	}
	*fn = "C_EncryptInit";
	rv = f->C_EncryptInit(h, &mech, a->key);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_Encrypt";
	rv = f->C_Encrypt(h, (CK_BYTE *)a->in, a->in_len, a->out, &a->out_len);
	if (rv != CKR_OK)
		a->out_len = cap;
	return rv;
}

int kms_hsm_gcm_encrypt(kms_hsm_session *s, kms_hsm_key key,
			const uint8_t iv[12], const uint8_t *aad,
			size_t aad_len, const uint8_t *pt, size_t pt_len,
			uint8_t *out, kms_err *err)
{
	/* Some modules refuse a NULL data pointer even for zero bytes. */
	static const uint8_t empty[1];
	struct gcm_arg a;
	CK_RV rv;

	if (s == NULL || iv == NULL || out == NULL ||
	    (aad == NULL && aad_len > 0) || (pt == NULL && pt_len > 0))
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_gcm_encrypt: missing argument");
	if (pt_len > SIZE_MAX - KMS_GCM_TAG_LEN)
		return kms_errf(err, KMS_ERR_INVALID, "plaintext too long");
	memset(&a, 0, sizeof(a));
	a.key = key;
	a.iv = iv;
	a.aad = aad;
	a.aad_len = aad_len;
	a.in = pt != NULL ? pt : empty;
	a.in_len = pt_len;
	a.out = out;
	a.out_len = pt_len + KMS_GCM_TAG_LEN;
	KMS_TRY(run_session(s, op_gcm, &a, &rv, err));
	if (a.out_len != pt_len + KMS_GCM_TAG_LEN) {
		kms_cleanse(out, pt_len + KMS_GCM_TAG_LEN);
		return kms_errf(
		    err, KMS_ERR_HSM,
		    "C_Encrypt: %lu bytes of AES-GCM output for %zu "
		    "bytes of plaintext",
		    a.out_len, pt_len);
	}
	return KMS_OK;
}

int kms_hsm_gcm_decrypt(kms_hsm_session *s, kms_hsm_key key,
			const uint8_t iv[12], const uint8_t *aad,
			size_t aad_len, const uint8_t *ct, size_t ct_len,
			uint8_t *out, kms_err *err)
{
	uint8_t stack[DECRYPT_STACK];
	uint8_t *scratch = stack;
	size_t pt_len;
	struct gcm_arg a;
	CK_RV rv;
	int rc;

	if (s == NULL || iv == NULL || ct == NULL ||
	    (aad == NULL && aad_len > 0))
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_gcm_decrypt: missing argument");
	if (ct_len < KMS_GCM_TAG_LEN)
		return kms_errf(err, KMS_ERR_INVALID,
				"ciphertext of %zu bytes is shorter than the "
				"GCM tag",
				ct_len);
	pt_len = ct_len - KMS_GCM_TAG_LEN;
	if (out == NULL && pt_len > 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_gcm_decrypt: no output buffer");
	/*
	 * The module wants room for ct_len bytes (its size query answers the
	 * ciphertext length), more than the caller's out holds: decrypt into
	 * a scratch buffer and copy the plaintext out.
	 */
	if (ct_len > sizeof(stack)) {
		scratch = kms_malloc(ct_len);
		if (scratch == NULL)
			return kms_errf(err, KMS_ERR_NOMEM,
					"no memory to decrypt %zu bytes",
					ct_len);
	}
	memset(&a, 0, sizeof(a));
	a.key = key;
	a.iv = iv;
	a.aad = aad;
	a.aad_len = aad_len;
	a.in = ct;
	a.in_len = ct_len;
	a.out = scratch;
	a.out_len = ct_len;
	a.decrypt = 1;
	rc = run_session(s, op_gcm, &a, &rv, err);
	if (rc == KMS_ERR_HSM && a.at_decrypt &&
	    (rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID ||
	     rv == CKR_ENCRYPTED_DATA_LEN_RANGE)) {
		/*
		 * The tag did not verify (NIST SP 800-38D section 7.2, step
		 * 9): SoftHSM reports it as CKR_GENERAL_ERROR. No detail
		 * beyond that: tampering and a wrong AAD must look alike.
		 */
		rc = kms_errf(err, KMS_ERR_AUTH_FAILED,
			      "ciphertext failed authentication (%s: %s)",
			      "C_Decrypt", kms_hsm_rv_name(rv));
	}
	if (rc == KMS_OK && a.out_len != pt_len)
		rc =
		    kms_errf(err, KMS_ERR_HSM,
			     "C_Decrypt: %lu bytes of plaintext from %zu bytes "
			     "of AES-GCM ciphertext",
			     a.out_len, ct_len);
	if (rc == KMS_OK)
		memcpy(out, scratch, pt_len);
	else if (out != NULL)
		kms_cleanse(out, pt_len);
	kms_cleanse(scratch, ct_len);
	if (scratch != stack)
		kms_free(scratch);
	return rc;
}

/* Copies an object's label for a message, printable bytes only. */
static void object_label(kms_hsm *hsm, CK_OBJECT_HANDLE obj, char *out,
			 size_t cap)
{
	char raw[AUDIT_LABEL_MAX];
	CK_ATTRIBUTE a = {CKA_LABEL, NULL, 0};
	CK_RV rv;
	size_t i;

	snprintf(out, cap, "(handle %lu, no label)", obj);
	rv = hsm->f->C_GetAttributeValue(hsm->holder, obj, &a, 1);
	if (rv != CKR_OK || a.ulValueLen == 0 || a.ulValueLen >= sizeof(raw))
		return;
	a.pValue = raw;
	rv = hsm->f->C_GetAttributeValue(hsm->holder, obj, &a, 1);
	if (rv != CKR_OK)
		return;
	for (i = 0; i < a.ulValueLen && i + 1 < cap; i++)
		out[i] = (raw[i] >= 0x20 && raw[i] < 0x7f) ? raw[i] : '?';
	out[i] = '\0';
}

/*
 * One key: CKA_SENSITIVE must be TRUE, and even the length of CKA_VALUE must
 * be refused with CKR_ATTRIBUTE_SENSITIVE (PKCS#11 v2.40 section 5.7,
 * C_GetAttributeValue). The value itself is never asked for.
 * *gone is set for a key destroyed since the search (a transient master
 * key of kms_hsm_master_key_create).
 */
static int audit_one(kms_hsm *hsm, CK_OBJECT_HANDLE obj, int *gone,
		     kms_err *err)
{
	char label[AUDIT_LABEL_MAX];
	CK_BBOOL sensitive = CK_FALSE;
	CK_ATTRIBUTE sa = ATTR(CKA_SENSITIVE, &sensitive);
	CK_ATTRIBUTE va = {CKA_VALUE, NULL, 0};
	CK_RV rv;

	*gone = 0;
	rv = hsm->f->C_GetAttributeValue(hsm->holder, obj, &sa, 1);
	if (rv == CKR_OBJECT_HANDLE_INVALID) {
		*gone = 1;
		return KMS_OK;
	}
	if (rv != CKR_OK)
		return hsm_fail(err, "C_GetAttributeValue(CKA_SENSITIVE)", rv);
	object_label(hsm, obj, label, sizeof(label));
	if (sensitive != CK_TRUE)
		return kms_errf(err, KMS_ERR_INTERNAL,
				"secret key '%s' is not CKA_SENSITIVE", label);
	rv = hsm->f->C_GetAttributeValue(hsm->holder, obj, &va, 1);
	if (rv == CKR_ATTRIBUTE_SENSITIVE)
		return KMS_OK;
	if (rv == CKR_OBJECT_HANDLE_INVALID) {
		*gone = 1;
		return KMS_OK;
	}
	if (rv == CKR_OK)
		return kms_errf(err, KMS_ERR_INTERNAL,
				"secret key '%s' has a readable CKA_VALUE",
				label);
	return kms_errf(err, KMS_ERR_HSM,
			"C_GetAttributeValue(CKA_VALUE) of '%s': %s (0x%lx)",
			label, kms_hsm_rv_name(rv), rv);
}

int kms_hsm_audit_secret_keys(kms_hsm *hsm, size_t *n_keys, kms_err *err)
{
	CK_ATTRIBUTE tmpl[] = {ATTR(CKA_CLASS, &class_secret)};
	struct find_arg fa = {tmpl, N_ATTRS(tmpl), NULL, 0, 0};
	size_t checked = 0;
	CK_RV rv;
	int rc, gone;

	if (hsm == NULL || n_keys == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_audit_secret_keys: no HSM or output");
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_find, &fa, &rv, err);
	if (rc != KMS_OK) {
		if (fa.nomem)
			rc = kms_errf(err, KMS_ERR_NOMEM,
				      "no memory to list the secret keys");
		goto out;
	}
	for (CK_ULONG i = 0; i < fa.n_found; i++) {
		KMS_TRY_GOTO(rc, audit_one(hsm, fa.found[i], &gone, err), out);
		if (!gone)
			checked++;
	}
	*n_keys = checked;
	rc = KMS_OK;
out:
	pthread_mutex_unlock(&hsm->holder_mu);
	kms_free(fa.found);
	return rc;
}

/* --- moving the domain key to a joining node --- */

#define TRANSPORT_RSA_BITS 3072
#define TRANSPORT_MODULUS_MIN_BITS 2048
#define TRANSPORT_MODULUS_MAX_BITS 8192
#define TRANSPORT_MODULUS_MAX (TRANSPORT_MODULUS_MAX_BITS / 8)
#define TRANSPORT_EXPONENT_MAX 8
/* FIPS 186-4 appendix B.3.1: e odd and 2^16 < e < 2^256. */
#define TRANSPORT_EXPONENT_MIN 65537u
#define TRANSPORT_KEY_LABEL "kms-transport-key"
#define TRANSPORT_PEER_LABEL "kms-joiner-transport-key"

static CK_OBJECT_CLASS class_public = CKO_PUBLIC_KEY;
static CK_OBJECT_CLASS class_private = CKO_PRIVATE_KEY;
static CK_KEY_TYPE type_rsa = CKK_RSA;

/*
 * RSAES-OAEP (RFC 8017 section 7.1) with an empty label, the same on both
 * ends. hsm.h asks for SHA-256 and MGF1-SHA-256, but SoftHSM 2.6.1 refuses
 * any OAEP hash but SHA-1 in C_WrapKey and C_UnwrapKey (CKR_ARGUMENTS_BAD,
 * "hashAlg must be CKM_SHA_1"; measured on our machines), and the two ends
 * must agree without a negotiation the join protocol does not carry. So
 * every node uses SHA-1 with MGF1-SHA-1, which every PKCS#11 module that
 * has CKM_RSA_PKCS_OAEP implements (it is the PKCS#1 default). OAEP's
 * security does not rest on the hash's collision resistance, and NIST
 * SP 800-131A Rev. 2 section 9 still allows SHA-1 outside signatures.
 * Switch both constants together, and only once no node runs SoftHSM 2.6.
 */
#define TRANSPORT_OAEP_HASH CKM_SHA_1
#define TRANSPORT_OAEP_MGF CKG_MGF1_SHA1

static void oaep_mechanism(CK_RSA_PKCS_OAEP_PARAMS *p, CK_MECHANISM *m)
{
	memset(p, 0, sizeof(*p));
	p->hashAlg = TRANSPORT_OAEP_HASH;
	p->mgf = TRANSPORT_OAEP_MGF;
	p->source = CKZ_DATA_SPECIFIED;
	p->pSourceData = NULL;
	p->ulSourceDataLen = 0;
	m->mechanism = CKM_RSA_PKCS_OAEP;
	m->pParameter = p;
	m->ulParameterLen = sizeof(*p);
}

struct keypair_arg {
	CK_OBJECT_HANDLE pub;
	CK_OBJECT_HANDLE priv;
	uint8_t modulus[TRANSPORT_MODULUS_MAX];
	CK_ULONG modulus_len;
	uint8_t exponent[TRANSPORT_EXPONENT_MAX];
	CK_ULONG exponent_len;
};

static CK_RV op_keypair(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
			const char **fn)
{
	static CK_BYTE f4[] = {0x01, 0x00, 0x01}; /* 65537 */
	static CK_ULONG bits = TRANSPORT_RSA_BITS;
	struct keypair_arg *a = p;
	/*
	 * Session objects: the pair lives only as long as the join, and a
	 * crash takes it away. The public half only wraps, so that it cannot
	 * be used to encrypt anything else under the joiner's name.
	 */
	CK_ATTRIBUTE pub_tmpl[] = {
	    ATTR(CKA_CLASS, &class_public),
	    ATTR(CKA_KEY_TYPE, &type_rsa),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_false),
	    ATTR(CKA_MODULUS_BITS, &bits),
	    {CKA_PUBLIC_EXPONENT, f4, sizeof(f4)},
	    ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_VERIFY_RECOVER, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_LABEL, (void *)TRANSPORT_KEY_LABEL,
	     sizeof(TRANSPORT_KEY_LABEL) - 1},
	};
	/*
	 * The private half never leaves the HSM, not even wrapped, and does
	 * nothing but unwrap the domain key.
	 */
	CK_ATTRIBUTE priv_tmpl[] = {
	    ATTR(CKA_CLASS, &class_private),
	    ATTR(CKA_KEY_TYPE, &type_rsa),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),
	    ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_false),
	    ATTR(CKA_UNWRAP, &ck_true),
	    ATTR(CKA_DECRYPT, &ck_false),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_SIGN_RECOVER, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_LABEL, (void *)TRANSPORT_KEY_LABEL,
	     sizeof(TRANSPORT_KEY_LABEL) - 1},
	};
	CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pub_attrs[] = {
	    {CKA_MODULUS, a->modulus, sizeof(a->modulus)},
	    {CKA_PUBLIC_EXPONENT, a->exponent, sizeof(a->exponent)},
	};
	CK_RV rv;

	a->pub = a->priv = CK_INVALID_HANDLE;
	*fn = "C_GenerateKeyPair";
	rv = f->C_GenerateKeyPair(h, &gen, pub_tmpl, N_ATTRS(pub_tmpl),
				  priv_tmpl, N_ATTRS(priv_tmpl), &a->pub,
				  &a->priv);
	if (rv != CKR_OK) {
		a->pub = a->priv = CK_INVALID_HANDLE;
		return rv;
	}
	*fn = "C_GetAttributeValue(CKA_MODULUS)";
	rv = f->C_GetAttributeValue(h, a->pub, pub_attrs, N_ATTRS(pub_attrs));
	if (rv == CKR_OK &&
	    (pub_attrs[0].ulValueLen == 0 || pub_attrs[1].ulValueLen == 0))
		rv = CKR_GENERAL_ERROR;
	if (rv != CKR_OK) {
		destroy_quietly(f, h, a->pub, "transport public key");
		destroy_quietly(f, h, a->priv, "transport private key");
		a->pub = a->priv = CK_INVALID_HANDLE;
		return rv;
	}
	a->modulus_len = pub_attrs[0].ulValueLen;
	a->exponent_len = pub_attrs[1].ulValueLen;
	return CKR_OK;
}

/* Copies n bytes into a new kms_buf. */
static int buf_dup(kms_buf *b, const uint8_t *p, size_t n)
{
	b->data = kms_malloc(n);
	if (b->data == NULL)
		return KMS_ERR_NOMEM;
	memcpy(b->data, p, n);
	b->len = n;
	return KMS_OK;
}

int kms_hsm_transport_keypair(kms_hsm *hsm, kms_hsm_key *priv_out,
			      kms_hsm_key *pub_out, kms_buf *modulus,
			      kms_buf *exponent, kms_err *err)
{
	struct keypair_arg *a;
	CK_RV rv;
	int rc;

	if (hsm == NULL || priv_out == NULL || pub_out == NULL ||
	    modulus == NULL || exponent == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_transport_keypair: missing argument");
	a = kms_calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"no memory for a transport key pair");
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_keypair, a, &rv, err);
	if (rc != KMS_OK) {
		kms_err_prefix(err, "cannot make a transport key pair");
		goto out;
	}
	if (buf_dup(modulus, a->modulus, a->modulus_len) != KMS_OK ||
	    buf_dup(exponent, a->exponent, a->exponent_len) != KMS_OK) {
		kms_buf_free(modulus);
		kms_buf_free(exponent);
		destroy_quietly(hsm->f, hsm->holder, a->pub,
				"transport public key");
		destroy_quietly(hsm->f, hsm->holder, a->priv,
				"transport private key");
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "no memory for a transport public key");
		goto out;
	}
	*priv_out = a->priv;
	*pub_out = a->pub;
	KMS_LOG_I("made an RSA-%d transport key pair on token '%s'",
		  TRANSPORT_RSA_BITS, hsm->label);
out:
	pthread_mutex_unlock(&hsm->holder_mu);
	kms_free(a);
	return rc;
}

/* Bits of a big-endian unsigned integer, leading zero bytes skipped. */
static size_t be_bits(const uint8_t *p, size_t n)
{
	size_t i = 0, bits;
	uint8_t top;

	while (i < n && p[i] == 0)
		i++;
	if (i == n)
		return 0;
	top = p[i];
	bits = (n - i - 1) * 8;
	while (top != 0) {
		bits++;
		top >>= 1;
	}
	return bits;
}

/*
 * The checks a member makes before it wraps the domain key under a key it
 * did not make. The HSM checks none of them: SoftHSM 2.6.1 "encrypts"
 * under e = 1, which leaves the OAEP encoding of the domain key in the
 * clear (RFC 8017 section 7.1.2 undoes it without any key). An odd
 * modulus of the right size can still be anyone's: who may receive the
 * domain key is decided by the join's authorization, not here.
 */
static int check_rsa_public(const uint8_t *modulus, size_t modulus_len,
			    const uint8_t *exponent, size_t exponent_len,
			    kms_err *err)
{
	size_t bits;
	uint64_t e = 0;

	if (modulus == NULL || modulus_len == 0 || exponent == NULL ||
	    exponent_len == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"transport key: empty RSA modulus or exponent");
	if (modulus_len > TRANSPORT_MODULUS_MAX + 1)
		return kms_errf(err, KMS_ERR_INVALID,
				"transport key: RSA modulus of %zu bytes, over "
				"%d bits",
				modulus_len, TRANSPORT_MODULUS_MAX_BITS);
	bits = be_bits(modulus, modulus_len);
	if (bits < TRANSPORT_MODULUS_MIN_BITS ||
	    bits > TRANSPORT_MODULUS_MAX_BITS)
		return kms_errf(err, KMS_ERR_INVALID,
				"transport key: RSA modulus of %zu bits, not "
				"%d to %d",
				bits, TRANSPORT_MODULUS_MIN_BITS,
				TRANSPORT_MODULUS_MAX_BITS);
	/* A product of two odd primes is odd. */
	if ((modulus[modulus_len - 1] & 1) == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"transport key: RSA modulus is even");
	if (exponent_len > TRANSPORT_EXPONENT_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"transport key: RSA public exponent of %zu "
				"bytes, over %d",
				exponent_len, TRANSPORT_EXPONENT_MAX);
	for (size_t i = 0; i < exponent_len; i++)
		e = (e << 8) | exponent[i];
	if (e < TRANSPORT_EXPONENT_MIN || (e & 1) == 0)
		return kms_errf(
		    err, KMS_ERR_INVALID,
		    "transport key: RSA public exponent must be odd "
		    "and at least %u",
		    TRANSPORT_EXPONENT_MIN);
	return KMS_OK;
}

struct wrap_for_arg {
	CK_OBJECT_HANDLE key; /* what is wrapped: the DK, or a carrier op_carrier_create made */
	const uint8_t *modulus;
	size_t modulus_len;
	const uint8_t *exponent;
	size_t exponent_len;
	uint8_t out[TRANSPORT_MODULUS_MAX];
	CK_ULONG out_len;
};

static CK_RV op_wrap_for(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
			 const char **fn)
{
	struct wrap_for_arg *a = p;
	/* The joiner's key: a session object that may only wrap. */
	CK_ATTRIBUTE tmpl[] = {
	    ATTR(CKA_CLASS, &class_public),
	    ATTR(CKA_KEY_TYPE, &type_rsa),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_false),
	    ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_VERIFY_RECOVER, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_MODULUS, (void *)a->modulus, a->modulus_len},
	    {CKA_PUBLIC_EXPONENT, (void *)a->exponent, a->exponent_len},
	    {CKA_LABEL, (void *)TRANSPORT_PEER_LABEL,
	     sizeof(TRANSPORT_PEER_LABEL) - 1},
	};
	CK_RSA_PKCS_OAEP_PARAMS params;
	CK_MECHANISM oaep;
	CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
	CK_RV rv, drv;

	oaep_mechanism(&params, &oaep);
	*fn = "C_CreateObject";
	rv = f->C_CreateObject(h, tmpl, N_ATTRS(tmpl), &pub);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_WrapKey";
	a->out_len = sizeof(a->out);
	rv = f->C_WrapKey(h, &oaep, pub, a->key, a->out, &a->out_len);
	drv = f->C_DestroyObject(h, pub);
	if (drv != CKR_OK)
		/* A public key, and it dies with the holder session. */
		KMS_LOG_W("C_DestroyObject(joiner transport key): %s",
			  kms_hsm_rv_name(drv));
	return rv;
}

/*
 * Checks the peer's RSA public key (check_rsa_public) and runs op, which
 * wraps a key to it, on the holder session; wrapped gets the blob. *key is
 * the key op wraps on the way in and the one it wrapped on the way out (a
 * carrier op_carrier_create made: the caller destroys it if this fails
 * after op). prefix starts the message of a failed op.
 */
static int wrap_for_peer(kms_hsm *hsm, hsm_op op, CK_OBJECT_HANDLE *key, const uint8_t *modulus,
			 size_t modulus_len, const uint8_t *exponent, size_t exponent_len,
			 const char *prefix, kms_buf *wrapped, kms_err *err)
{
	struct wrap_for_arg *a;
	size_t skip = 0, eskip = 0;
	CK_RV rv;
	int rc;

	KMS_TRY(check_rsa_public(modulus, modulus_len, exponent, exponent_len,
				 err));
	/* A PKCS#11 "big integer" is unsigned: no sign byte, no padding. */
	while (modulus[skip] == 0)
		skip++;
	while (exponent[eskip] == 0)
		eskip++;
	a = kms_calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory to wrap a key for a peer");
	a->key = *key;
	a->modulus = modulus + skip;
	a->modulus_len = modulus_len - skip;
	a->exponent = exponent + eskip;
	a->exponent_len = exponent_len - eskip;
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op, a, &rv, err);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rc != KMS_OK) {
		kms_err_prefix(err, prefix);
		goto out;
	}
	*key = a->key;
	rc = buf_dup(wrapped, a->out, a->out_len);
	if (rc != KMS_OK)
		rc = kms_errf(err, KMS_ERR_NOMEM, "no memory for a key wrapped for a peer");
out:
	kms_free(a);
	return rc;
}

int kms_hsm_domain_key_wrap_for(kms_hsm *hsm, kms_hsm_key dk, const uint8_t *modulus,
				size_t modulus_len, const uint8_t *exponent, size_t exponent_len,
				kms_buf *wrapped, kms_err *err)
{
	CK_OBJECT_HANDLE key = dk;

	if (hsm == NULL || wrapped == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_domain_key_wrap_for: no HSM or "
				"output");
	return wrap_for_peer(hsm, op_wrap_for, &key, modulus, modulus_len, exponent, exponent_len,
			     "cannot wrap the domain key", wrapped, err);
}

/*
 * What an RSA-OAEP blob from a peer must at least be before the HSM sees
 * it: RSA output is exactly as long as the modulus (RFC 8017 7.1.1).
 */
static int check_rsa_blob(const uint8_t *wrapped, size_t len, const char *prefix, kms_err *err)
{
	if (wrapped == NULL || len == 0)
		return kms_errf(err, KMS_ERR_INVALID, "%s: empty blob", prefix);
	if (len > TRANSPORT_MODULUS_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"%s: a blob of %zu bytes is longer than an RSA-%d modulus", prefix,
				len, TRANSPORT_MODULUS_MAX_BITS);
	return KMS_OK;
}

struct install_arg {
	CK_OBJECT_HANDLE priv;
	const uint8_t *blob;
	size_t len;
	CK_ATTRIBUTE *tmpl;
	CK_ULONG n_tmpl;
	CK_OBJECT_HANDLE key;
	/* A restore: the backup key's value; priv is unused then. */
	const uint8_t *backup_key;
};

/*
 * A restore's backup key: a session object that only unwraps, once, and is
 * destroyed right after; its value came from the custodians' shares.
 */
static CK_RV backup_key_object(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, const uint8_t *value,
			       CK_OBJECT_HANDLE *out)
{
	CK_ATTRIBUTE t[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),
	    ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_false),
	    ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),
	    ATTR(CKA_WRAP, &ck_false),
	    ATTR(CKA_UNWRAP, &ck_true),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_VALUE, (void *)value, AES256_KEY_LEN},
	};

	return f->C_CreateObject(h, t, N_ATTRS(t), out);
}

static CK_RV op_install(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p,
			const char **fn)
{
	struct install_arg *a = p;
	CK_RSA_PKCS_OAEP_PARAMS params;
	CK_MECHANISM oaep, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE bk = CK_INVALID_HANDLE;
	CK_RV rv;

	oaep_mechanism(&params, &oaep);
	a->key = CK_INVALID_HANDLE;
	if (a->backup_key != NULL) {
		*fn = "C_CreateObject (backup key)";
		rv = backup_key_object(f, h, a->backup_key, &bk);
		if (rv != CKR_OK)
			return rv;
	}
	*fn = "C_UnwrapKey";
	/* dk_template: CKA_MODIFIABLE=FALSE last, and no retry without it. */
	rv = f->C_UnwrapKey(h, a->backup_key != NULL ? &kwp : &oaep,
			    a->backup_key != NULL ? bk : a->priv, (CK_BYTE *)a->blob, a->len,
			    a->tmpl, a->n_tmpl, &a->key);
	if (rv != CKR_OK)
		a->key = CK_INVALID_HANDLE;
	destroy_quietly(f, h, bk, "backup key");
	return rv;
}

static int install_dk(kms_hsm *hsm, const char *label, struct install_arg *ia,
		      kms_hsm_key *dk_out, kms_err *err);

int kms_hsm_domain_key_install(kms_hsm *hsm, kms_hsm_key priv,
			       const char *label, const uint8_t *wrapped,
			       size_t len, kms_hsm_key *dk_out, kms_err *err)
{
	struct install_arg a = {priv, wrapped, len, NULL, 0, CK_INVALID_HANDLE, NULL};

	if (hsm == NULL || label == NULL || label[0] == '\0' || dk_out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_domain_key_install: no HSM, label or "
				"output");
	KMS_TRY(check_rsa_blob(wrapped, len, "cannot install domain key", err));
	return install_dk(hsm, label, &a, dk_out, err);
}

int kms_hsm_domain_key_restore(kms_hsm *hsm, const char *label,
			       const uint8_t key[AES256_KEY_LEN], const uint8_t *wrapped,
			       size_t len, kms_hsm_key *dk_out, kms_err *err)
{
	struct install_arg a = {CK_INVALID_HANDLE, wrapped, len, NULL, 0, CK_INVALID_HANDLE, key};

	if (hsm == NULL || label == NULL || label[0] == '\0' || dk_out == NULL || key == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_domain_key_restore: no HSM, label, key or output");
	if (wrapped == NULL || len != WRAPPED_AES256_LEN)
		return kms_errf(err, KMS_ERR_INVALID,
				"cannot restore domain key: a wrapped AES-256 key is %d bytes, "
				"not %zu",
				WRAPPED_AES256_LEN, len);
	return install_dk(hsm, label, &a, dk_out, err);
}

/* Unwraps a domain key into the token under label, once: RSA-OAEP or RFC 5649. */
static int install_dk(kms_hsm *hsm, const char *label, struct install_arg *ia,
		      kms_hsm_key *dk_out, kms_err *err)
{
	CK_ATTRIBUTE find_tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
	};
	CK_ATTRIBUTE tmpl[DK_TMPL_MAX];
	struct find_arg fa = {find_tmpl, N_ATTRS(find_tmpl), NULL, 0, 0};
	struct install_arg a = *ia;
	CK_ULONG key_len = 0;
	CK_RV rv;
	int rc;

	a.tmpl = tmpl;
	a.n_tmpl = dk_template(tmpl, label, 0);

	/* Look and write under one lock: one key per label. */
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_find, &fa, &rv, err);
	if (rc != KMS_OK) {
		if (fa.nomem)
			rc = kms_errf(err, KMS_ERR_NOMEM,
				      "no memory to search the token");
		goto out;
	}
	if (fa.n_found > 0) {
		rc = kms_errf(err, KMS_ERR_EXISTS,
			      "cannot install domain key: a key labelled '%s' "
			      "already exists on token '%s'",
			      label, hsm->label);
		goto out;
	}
	rc = run_holder(hsm, op_install, &a, &rv, err);
	if (rc != KMS_OK) {
		/*
		 * A tampered blob, another transport key, another OAEP
		 * encoding: RFC 8017 section 7.1.2 makes them all one
		 * "decryption error", and so do we.
		 */
		if (rc == KMS_ERR_HSM)
			kms_err_prefix(err, "cannot install domain key");
		goto out;
	}
	/*
	 * A member could have wrapped any key: keep it only if it is the
	 * AES-256 key a domain key is. The check needs the key in the token,
	 * so a wrong one is destroyed again.
	 */
	rc = dk_value_len(hsm, a.key, &key_len, err);
	if (rc == KMS_OK && key_len != AES256_KEY_LEN)
		rc = kms_errf(err, KMS_ERR_HSM,
			      "cannot install domain key: the unwrapped key "
			      "is %lu bytes, not AES-256",
			      key_len);
	if (rc != KMS_OK) {
		rv = hsm->f->C_DestroyObject(hsm->holder, a.key);
		if (rv != CKR_OK)
			KMS_LOG_E("C_DestroyObject of a rejected domain key "
				  "'%s' on token '%s': %s; remove it by hand",
				  label, hsm->label, kms_hsm_rv_name(rv));
		goto out;
	}
	*dk_out = a.key;
	KMS_LOG_I("installed domain key '%s' on token '%s'", label, hsm->label);
out:
	pthread_mutex_unlock(&hsm->holder_mu);
	kms_free(fa.found);
	return rc;
}

/* --- domain-key rotation --- */

struct kms_hsm_rewrapper {
	kms_hsm *hsm;
	/* The transient copy of the old DK (a holder session object), or
	 * the old DK itself when it is not extractable (then direct). */
	CK_OBJECT_HANDLE from;
	int direct;
};

/*
 * What a master key unwrapped for rewrapping must be: it leaves the HSM
 * only by C_WrapKey (CKA_EXTRACTABLE) and does nothing else, and its value
 * is never readable. The transient DK copy carries these as its
 * CKA_UNWRAP_TEMPLATE, so the module enforces them on every unwrap.
 */
static CK_ATTRIBUTE rewrap_key_rules[] = {
    ATTR(CKA_SENSITIVE, &ck_true), ATTR(CKA_EXTRACTABLE, &ck_true),
    ATTR(CKA_ENCRYPT, &ck_false),  ATTR(CKA_DECRYPT, &ck_false),
    ATTR(CKA_WRAP, &ck_false),	   ATTR(CKA_UNWRAP, &ck_false),
    ATTR(CKA_SIGN, &ck_false),	   ATTR(CKA_VERIFY, &ck_false),
    ATTR(CKA_DERIVE, &ck_false),
};

/*
 * The key a rewrapper unwraps master keys under (kms_hsm_rewrapper.from):
 * the transient copy of the old DK, or a carrier key that arrived from
 * another region. It only unwraps, under rewrap_key_rules, and cannot
 * leave; a session object of the holder session.
 */
static CK_ATTRIBUTE rewrap_from_attrs[] = {
    ATTR(CKA_CLASS, &class_secret),
    ATTR(CKA_KEY_TYPE, &type_aes),
    ATTR(CKA_TOKEN, &ck_false),
    ATTR(CKA_PRIVATE, &ck_true),
    ATTR(CKA_SENSITIVE, &ck_true),
    ATTR(CKA_EXTRACTABLE, &ck_false),
    ATTR(CKA_ENCRYPT, &ck_false),
    ATTR(CKA_DECRYPT, &ck_false),
    ATTR(CKA_WRAP, &ck_false),
    ATTR(CKA_UNWRAP, &ck_true),
    ATTR(CKA_SIGN, &ck_false),
    ATTR(CKA_VERIFY, &ck_false),
    ATTR(CKA_DERIVE, &ck_false),
    {CKA_UNWRAP_TEMPLATE, rewrap_key_rules, sizeof(rewrap_key_rules)},
    /* Last, as in dk_template: SoftHSM refuses what follows it. */
    ATTR(CKA_MODIFIABLE, &ck_false),
};

struct copy_arg {
	CK_OBJECT_HANDLE dk;
	CK_OBJECT_HANDLE copy;
	int unextractable; /* the DK refused to be wrapped */
};

static CK_RV op_dk_copy(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p, const char **fn)
{
	struct copy_arg *a = p;
	/* The one-time key: wraps and unwraps once, never leaves, never read. */
	CK_ATTRIBUTE one_time[] = {
	    ATTR(CKA_CLASS, &class_secret),   ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_VALUE_LEN, &aes256_len), ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),      ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_false), ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),     ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_UNWRAP, &ck_true),	      ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),      ATTR(CKA_DERIVE, &ck_false),
	};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE t = CK_INVALID_HANDLE;
	uint8_t blob[WRAPPED_MAX];
	CK_ULONG len = sizeof(blob);
	CK_RV rv;

	a->copy = CK_INVALID_HANDLE;
	*fn = "C_GenerateKey (one-time key)";
	rv = f->C_GenerateKey(h, &gen, one_time, N_ATTRS(one_time), &t);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_WrapKey (domain key under the one-time key)";
	rv = f->C_WrapKey(h, &kwp, t, a->dk, blob, &len);
	if (rv == CKR_KEY_UNEXTRACTABLE)
		a->unextractable = 1;
	if (rv == CKR_OK) {
		*fn = "C_UnwrapKey (domain key copy)";
		rv = f->C_UnwrapKey(h, &kwp, t, blob, len, rewrap_from_attrs,
				    N_ATTRS(rewrap_from_attrs), &a->copy);
		if (rv != CKR_OK)
			a->copy = CK_INVALID_HANDLE;
	}
	kms_cleanse(blob, sizeof(blob));
	destroy_quietly(f, h, t, "one-time key");
	return rv;
}

int kms_hsm_rewrap_open(kms_hsm *hsm, kms_hsm_key old_dk, kms_hsm_rewrapper **out, kms_err *err)
{
	struct copy_arg a = {old_dk, CK_INVALID_HANDLE, 0};
	kms_hsm_rewrapper *rw;
	CK_RV rv;
	int rc;

	if (hsm == NULL || old_dk == CK_INVALID_HANDLE || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_rewrap_open: no HSM or domain key");
	rw = kms_calloc(1, sizeof(*rw));
	if (rw == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory to rewrap master keys");
	rw->hsm = hsm;
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_dk_copy, &a, &rv, err);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rc != KMS_OK && a.unextractable) {
		/* An old DK that never left its token: usable only directly. */
		KMS_LOG_W("domain key on token '%s' is not extractable; rewrapping under it "
			  "directly",
			  hsm->label);
		kms_err_clear(err);
		rw->from = old_dk;
		rw->direct = 1;
		*out = rw;
		return KMS_OK;
	}
	if (rc != KMS_OK) {
		kms_err_prefix(err, "cannot prepare the old domain key for rewrapping");
		kms_free(rw);
		return rc;
	}
	rw->from = a.copy;
	*out = rw;
	return KMS_OK;
}

struct rewrap_arg {
	CK_OBJECT_HANDLE from, to;
	const uint8_t *blob;
	size_t len;
	uint8_t out[WRAPPED_MAX];
	CK_ULONG out_len;
};

static CK_RV op_rewrap(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p, const char **fn)
{
	struct rewrap_arg *a = p;
	CK_ATTRIBUTE usage[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),
	};
	CK_ATTRIBUTE tmpl[N_ATTRS(usage) + N_ATTRS(rewrap_key_rules)];
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
	CK_RV rv;

	memcpy(tmpl, usage, sizeof(usage));
	memcpy(tmpl + N_ATTRS(usage), rewrap_key_rules, sizeof(rewrap_key_rules));
	*fn = "C_UnwrapKey (master key, to rewrap)";
	rv = f->C_UnwrapKey(h, &kwp, a->from, (CK_BYTE *)a->blob, a->len, tmpl, N_ATTRS(tmpl), &k);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_WrapKey (master key under the new domain key)";
	a->out_len = sizeof(a->out);
	rv = f->C_WrapKey(h, &kwp, a->to, k, a->out, &a->out_len);
	destroy_quietly(f, h, k, "master key being rewrapped");
	return rv;
}

int kms_hsm_rewrap(kms_hsm_rewrapper *rw, kms_hsm_key new_dk, const uint8_t *wrapped, size_t len,
		   kms_buf *out, kms_err *err)
{
	struct rewrap_arg a;
	CK_RV rv;
	int rc;

	if (rw == NULL || new_dk == CK_INVALID_HANDLE || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_rewrap: no rewrapper, key or output");
	if (wrapped == NULL || len != WRAPPED_AES256_LEN)
		return kms_errf(err, KMS_ERR_HSM,
				"cannot rewrap master key: a wrapped AES-256 key is %d bytes "
				"(RFC 5649), not %zu",
				WRAPPED_AES256_LEN, len);
	memset(&a, 0, sizeof(a));
	a.from = rw->from;
	a.to = new_dk;
	a.blob = wrapped;
	a.len = len;
	pthread_mutex_lock(&rw->hsm->holder_mu);
	rc = run_holder(rw->hsm, op_rewrap, &a, &rv, err);
	pthread_mutex_unlock(&rw->hsm->holder_mu);
	if (rc != KMS_OK) {
		if (rc == KMS_ERR_HSM)
			kms_err_prefix(err, "cannot rewrap master key");
		return rc;
	}
	out->data = kms_malloc(a.out_len);
	if (out->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory for a rewrapped master key");
	memcpy(out->data, a.out, a.out_len);
	out->len = a.out_len;
	return KMS_OK;
}

void kms_hsm_rewrap_close(kms_hsm_rewrapper *rw)
{
	if (rw == NULL)
		return;
	if (!rw->direct)
		kms_hsm_key_destroy(rw->hsm, rw->from);
	kms_free(rw);
}

/* --- carrying master keys to another region (issue #7) --- */

#define CARRIER_LABEL "kms-carrier-key"

/*
 * The sending side's carrier: an AES-256 key generated for one pull, then
 * wrapped to the receiving node's transport key by op_wrap_for. Sensitive,
 * so its value is never readable; extractable only so that C_WrapKey can
 * take it to that one RSA key; CKA_WRAP only, because all it does here is
 * take master keys (RFC 5649) out to the peer; never a token object.
 * CKA_MODIFIABLE=FALSE keeps anyone in this process from giving it
 * CKA_DECRYPT or CKA_UNWRAP later (last, as in dk_template). On failure
 * after the key exists, it is destroyed and a->key is invalid again.
 */
static CK_RV op_carrier_create(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p, const char **fn)
{
	struct wrap_for_arg *a = p;
	CK_ATTRIBUTE t[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_VALUE_LEN, &aes256_len),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),
	    ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_true),
	    ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),
	    ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_UNWRAP, &ck_false),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_LABEL, (void *)CARRIER_LABEL, sizeof(CARRIER_LABEL) - 1},
	    ATTR(CKA_MODIFIABLE, &ck_false),
	};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_RV rv;

	a->key = CK_INVALID_HANDLE;
	*fn = "C_GenerateKey (carrier key)";
	rv = f->C_GenerateKey(h, &gen, t, N_ATTRS(t), &a->key);
	if (rv != CKR_OK) {
		a->key = CK_INVALID_HANDLE;
		return rv;
	}
	rv = op_wrap_for(f, h, a, fn);
	if (rv != CKR_OK) {
		destroy_quietly(f, h, a->key, "carrier key");
		a->key = CK_INVALID_HANDLE;
	}
	return rv;
}

int kms_hsm_carrier_create(kms_hsm *hsm, const uint8_t *modulus, size_t modulus_len,
			   const uint8_t *exponent, size_t exponent_len, kms_hsm_key *carrier,
			   kms_buf *wrapped_carrier, kms_err *err)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	int rc;

	if (hsm == NULL || carrier == NULL || wrapped_carrier == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_carrier_create: no HSM or output");
	rc = wrap_for_peer(hsm, op_carrier_create, &key, modulus, modulus_len, exponent,
			   exponent_len, "cannot make a carrier key", wrapped_carrier, err);
	if (rc != KMS_OK) {
		/* Made and wrapped, but the blob could not be kept. */
		kms_hsm_key_destroy(hsm, key);
		return rc;
	}
	*carrier = key;
	return KMS_OK;
}

int kms_hsm_carrier_install(kms_hsm *hsm, kms_hsm_key transport_priv, const uint8_t *wrapped,
			    size_t len, kms_hsm_rewrapper **out, kms_err *err)
{
	struct install_arg a = {.priv = transport_priv,
				.blob = wrapped,
				.len = len,
				.tmpl = rewrap_from_attrs,
				.n_tmpl = N_ATTRS(rewrap_from_attrs),
				.key = CK_INVALID_HANDLE};
	kms_hsm_rewrapper *rw;
	int rc;

	if (hsm == NULL || transport_priv == CK_INVALID_HANDLE || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_carrier_install: no HSM, transport key or output");
	KMS_TRY(check_rsa_blob(wrapped, len, "cannot install carrier key", err));
	rw = kms_calloc(1, sizeof(*rw));
	if (rw == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory for a carrier key");
	/*
	 * Another transport key or a tampered blob: one OAEP "decryption
	 * error" (RFC 8017 section 7.1.2). A carrier that is not AES-256
	 * would be weaker than the master keys it carries.
	 */
	pthread_mutex_lock(&hsm->holder_mu);
	rc = unwrap_aes256(hsm, op_install, &a, &a.key, "cannot install carrier key", err);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rc != KMS_OK) {
		kms_free(rw);
		return rc;
	}
	rw->hsm = hsm;
	rw->from = a.key;
	*out = rw;
	return KMS_OK;
}

int kms_hsm_domain_key_destroy(kms_hsm *hsm, kms_hsm_key dk, kms_err *err)
{
	CK_RV rv;

	if (hsm == NULL || dk == CK_INVALID_HANDLE)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_domain_key_destroy: no HSM or key");
	pthread_mutex_lock(&hsm->holder_mu);
	rv = hsm->f->C_DestroyObject(hsm->holder, dk);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rv != CKR_OK)
		return kms_errf(err, KMS_ERR_HSM, "C_DestroyObject (domain key on token '%s'): %s (0x%lx)",
				hsm->label, kms_hsm_rv_name(rv), rv);
	return KMS_OK;
}

int kms_hsm_dk_label(const char *base, uint32_t gen, char out[KMS_HSM_DK_LABEL_MAX], kms_err *err)
{
	int n;

	if (base == NULL || base[0] == '\0' || gen == 0)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_dk_label: no label or generation");
	if (gen == 1)
		n = snprintf(out, KMS_HSM_DK_LABEL_MAX, "%s", base);
	else
		n = snprintf(out, KMS_HSM_DK_LABEL_MAX, "%s.g%u", base, gen);
	if (n < 0 || n >= KMS_HSM_DK_LABEL_MAX)
		return kms_errf(err, KMS_ERR_CONFIG, "domain key label '%s' is too long", base);
	return KMS_OK;
}

/* The generation label names after base, or 0 when it names none. */
static uint32_t dk_label_generation(const char *base, const char *label)
{
	size_t bl = strlen(base);
	unsigned long g = 0;
	const char *p;

	if (strncmp(label, base, bl) != 0)
		return 0;
	if (label[bl] == '\0')
		return 1;
	if (label[bl] != '.' || label[bl + 1] != 'g' || label[bl + 2] < '1' || label[bl + 2] > '9')
		return 0;
	for (p = label + bl + 2; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || g > 400000000UL)
			return 0;
		g = g * 10 + (unsigned long)(*p - '0');
	}
	return g >= 2 ? (uint32_t)g : 0;
}

int kms_hsm_dk_generations(kms_hsm *hsm, const char *base, uint32_t *gens, size_t max, size_t *n,
			   kms_err *err)
{
	CK_ATTRIBUTE find_tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_true),
	};
	struct find_arg fa = {find_tmpl, N_ATTRS(find_tmpl), NULL, 0, 0};
	char label[AUDIT_LABEL_MAX];
	CK_RV rv;
	int rc;

	if (hsm == NULL || base == NULL || n == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_dk_generations: no HSM or label");
	*n = 0;
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_find, &fa, &rv, err);
	if (rc != KMS_OK) {
		if (fa.nomem)
			rc = kms_errf(err, KMS_ERR_NOMEM, "no memory to search the token");
		goto out;
	}
	for (CK_ULONG i = 0; i < fa.n_found; i++) {
		uint32_t g;
		size_t j;

		object_label(hsm, fa.found[i], label, sizeof(label));
		g = dk_label_generation(base, label);
		if (g == 0 || *n >= max)
			continue;
		/* Insertion keeps them ascending; a handful at most. */
		for (j = *n; j > 0 && gens[j - 1] > g; j--)
			gens[j] = gens[j - 1];
		gens[j] = g;
		(*n)++;
	}
out:
	pthread_mutex_unlock(&hsm->holder_mu);
	kms_free(fa.found);
	return rc;
}

/* --- backups (issue #7) --- */

struct backup_wrap_arg {
	CK_OBJECT_HANDLE dk;
	uint8_t key[AES256_KEY_LEN];
	uint8_t wrapped[WRAPPED_MAX];
	CK_ULONG wrapped_len;
};

static CK_RV op_backup_wrap(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, void *p, const char **fn)
{
	struct backup_wrap_arg *a = p;
	/*
	 * Not sensitive and extractable: its value must be read once, to be
	 * split into the custodians' shares. It only wraps, lives in this
	 * session alone and is destroyed before the call returns.
	 */
	CK_ATTRIBUTE t[] = {
	    ATTR(CKA_CLASS, &class_secret),   ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_VALUE_LEN, &aes256_len), ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),      ATTR(CKA_SENSITIVE, &ck_false),
	    ATTR(CKA_EXTRACTABLE, &ck_true),  ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),     ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_UNWRAP, &ck_false),      ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),      ATTR(CKA_DERIVE, &ck_false),
	};
	CK_ATTRIBUTE value = {CKA_VALUE, a->key, sizeof(a->key)};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE bk = CK_INVALID_HANDLE;
	CK_RV rv;

	*fn = "C_GenerateKey (backup key)";
	rv = f->C_GenerateKey(h, &gen, t, N_ATTRS(t), &bk);
	if (rv != CKR_OK)
		return rv;
	*fn = "C_WrapKey (domain key under the backup key)";
	a->wrapped_len = sizeof(a->wrapped);
	rv = f->C_WrapKey(h, &kwp, bk, a->dk, a->wrapped, &a->wrapped_len);
	if (rv == CKR_OK) {
		*fn = "C_GetAttributeValue (backup key)";
		rv = f->C_GetAttributeValue(h, bk, &value, 1);
		if (rv == CKR_OK && value.ulValueLen != AES256_KEY_LEN)
			rv = CKR_GENERAL_ERROR;
	}
	destroy_quietly(f, h, bk, "backup key");
	return rv;
}

int kms_hsm_backup_wrap_dk(kms_hsm *hsm, kms_hsm_key dk, uint8_t key_out[AES256_KEY_LEN],
			   kms_buf *wrapped, kms_err *err)
{
	struct backup_wrap_arg *a;
	CK_RV rv;
	int rc;

	if (hsm == NULL || dk == CK_INVALID_HANDLE || key_out == NULL || wrapped == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "kms_hsm_backup_wrap_dk: no HSM or key");
	a = kms_calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "no memory to back up the domain key");
	a->dk = dk;
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_backup_wrap, a, &rv, err);
	pthread_mutex_unlock(&hsm->holder_mu);
	if (rc != KMS_OK) {
		kms_err_prefix(err, "cannot wrap the domain key under a backup key");
		goto out;
	}
	rc = buf_dup(wrapped, a->wrapped, a->wrapped_len);
	if (rc != KMS_OK) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "no memory for the wrapped domain key");
		goto out;
	}
	memcpy(key_out, a->key, AES256_KEY_LEN);
out:
	kms_free_secret(a, sizeof(*a));
	return rc;
}
