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

int kms_hsm_domain_key(kms_hsm *hsm, const char *label, int create,
		       kms_hsm_key *out, kms_err *err)
{
	CK_ATTRIBUTE find_tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_true),
	    {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
	};
	/*
	 * The domain key only wraps and unwraps master keys (RFC 5649); it
	 * never encrypts data, never leaves the token, and cannot be changed
	 * to do either (CKA_MODIFIABLE=FALSE, PKCS#11 v2.40 section 4.4).
	 */
	CK_ATTRIBUTE gen_tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_VALUE_LEN, &aes256_len),
	    ATTR(CKA_TOKEN, &ck_true),
	    ATTR(CKA_PRIVATE, &ck_true),
	    ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_false),
	    ATTR(CKA_MODIFIABLE, &ck_false),
	    ATTR(CKA_WRAP, &ck_true),
	    ATTR(CKA_UNWRAP, &ck_true),
	    ATTR(CKA_ENCRYPT, &ck_false),
	    ATTR(CKA_DECRYPT, &ck_false),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
	};
	CK_MECHANISM gen_mech = {CKM_AES_KEY_GEN, NULL, 0};
	struct find_arg fa = {find_tmpl, N_ATTRS(find_tmpl), NULL, 0, 0};
	struct generate_arg ga = {&gen_mech, gen_tmpl, N_ATTRS(gen_tmpl), 0};
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG len = 0;
	CK_RV rv;
	int rc;

	if (hsm == NULL || label == NULL || label[0] == '\0' || out == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"kms_hsm_domain_key: no HSM or label");
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
	KMS_TRY_GOTO(rc, key_value_len(hsm, hsm->holder, key, &len, err), out);
	if (len != AES256_KEY_LEN) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "domain key '%s' is AES-%lu, not AES-256", label,
			      len * 8);
		goto out;
	}
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
	 * the HSM again, not even wrapped.
	 */
	CK_ATTRIBUTE tmpl[] = {
	    ATTR(CKA_CLASS, &class_secret),
	    ATTR(CKA_KEY_TYPE, &type_aes),
	    ATTR(CKA_TOKEN, &ck_false),
	    ATTR(CKA_PRIVATE, &ck_true),
	    ATTR(CKA_SENSITIVE, &ck_true),
	    ATTR(CKA_EXTRACTABLE, &ck_false),
	    ATTR(CKA_ENCRYPT, &ck_true),
	    ATTR(CKA_DECRYPT, &ck_true),
	    ATTR(CKA_WRAP, &ck_false),
	    ATTR(CKA_UNWRAP, &ck_false),
	    ATTR(CKA_SIGN, &ck_false),
	    ATTR(CKA_VERIFY, &ck_false),
	    ATTR(CKA_DERIVE, &ck_false),
	    {CKA_LABEL, (void *)MASTER_KEY_LABEL, sizeof(MASTER_KEY_LABEL) - 1},
	};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};

	*fn = "C_UnwrapKey";
	return f->C_UnwrapKey(h, &kwp, a->dk, (CK_BYTE *)a->blob, a->len, tmpl,
			      N_ATTRS(tmpl), &a->key);
}

int kms_hsm_master_key_unwrap(kms_hsm *hsm, kms_hsm_key dk,
			      const uint8_t *wrapped, size_t len,
			      kms_hsm_key *out, kms_err *err)
{
	struct unwrap_arg a = {dk, wrapped, len, CK_INVALID_HANDLE};
	CK_ULONG key_len = 0;
	CK_RV rv;
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
	pthread_mutex_lock(&hsm->holder_mu);
	rc = run_holder(hsm, op_unwrap, &a, &rv, err);
	if (rc != KMS_OK) {
		/*
		 * RFC 5649 section 3 integrity check: a wrong domain key and
		 * a tampered blob look the same, and must.
		 */
		if (rc == KMS_ERR_HSM)
			kms_err_prefix(err, "cannot unwrap master key");
		goto out;
	}
	/* Where the module reports the size (not SoftHSM 2.6.1), check it. */
	rc = key_value_len(hsm, hsm->holder, a.key, &key_len, err);
	if (rc == KMS_OK && key_len != 0 && key_len != AES256_KEY_LEN)
		rc = kms_errf(err, KMS_ERR_HSM,
			      "cannot unwrap master key: it is a %lu-byte key, "
			      "not AES-256",
			      key_len);
	if (rc != KMS_OK) {
		hsm->f->C_DestroyObject(hsm->holder, a.key);
		goto out;
	}
	*out = a.key;
out:
	pthread_mutex_unlock(&hsm->holder_mu);
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
		KMS_LOG_W("C_DestroyObject(master key %lu): %s", key,
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
