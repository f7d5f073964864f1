/* config.c - the node configuration file (strict INI through libinih) and the HSM PIN source. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "kms/alloc.h"
#include "kms/config.h"
#include "kms/error.h"
#include "kms/hostport.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "kms/region.h"
#include "kms/spiffe.h"

/* A PIN longer than this is a mistake (a key file named by accident). */
#define PIN_MAX 256
/* PKCS#11 CK_TOKEN_INFO.label is 32 bytes, blank padded. */
#define TOKEN_LABEL_MAX 32
#define ADMINS_MAX 256
/* gRPC takes durations as int milliseconds: 24 days of seconds fit. */
#define KMS_GRPC_MAX_SECONDS 2073600

enum kind {
	K_UINT,	  /* unsigned number within [min, max] */
	K_STRING, /* non-empty string */
	K_PATH,	  /* path, resolved against the config file's directory */
	K_MODULE, /* a path if it has a '/', else a name for dlopen's search */
	K_LOGLEVEL,    /* error|warn|info|debug */
	K_LISTEN,      /* host:port */
	K_LISTEN_GRPC, /* host:port or unix:path */
	K_TLS_KEY,     /* pkcs11: URI (RFC 7512) */
	K_LABEL,       /* PKCS#11 token label */
	K_ENV_NAME,    /* environment variable name */
	K_ADMINS,      /* comma-separated principals; may repeat to add more */
	K_SEEDS,       /* comma-separated host:port of cluster members */
	K_TRUST_DOMAIN, /* a SPIFFE trust domain name */
	K_BOOL,        /* true|false, into an int */
	K_TLS_VERSION, /* 1.2 or 1.3, stored as 12 or 13 */
	K_OPERATORS,   /* comma-separated name:PUBKEYFILE; may repeat to add more */
	K_REGION,      /* a region name (kms_region_name_check) */
};

struct key_spec {
	const char *section;
	const char *name;
	enum kind kind;
	size_t offset; /* into struct kms_config */
	unsigned min, max;
	int required;
};

#define F(field) offsetof(kms_config, field)

static const struct key_spec keys[] = {
    {"node", "id", K_UINT, F(node_id), 1, UINT_MAX, 1},
    {"node", "data_dir", K_PATH, F(data_dir), 0, 0, 1},
    {"node", "log_level", K_LOGLEVEL, F(log_level), 0, 0, 0},
    {"node", "allow_core_dumps", K_BOOL, F(allow_core_dumps), 0, 0, 0},
    {"grpc", "listen", K_LISTEN_GRPC, F(grpc_listen), 0, 0, 1},
    {"grpc", "workers", K_UINT, F(grpc_workers), 1, 64, 0},
    {"grpc", "ca_file", K_PATH, F(ca_file), 0, 0, 1},
    {"grpc", "cert_file", K_PATH, F(cert_file), 0, 0, 1},
    {"grpc", "tls_key", K_TLS_KEY, F(tls_key_uri), 0, 0, 1},
    {"grpc", "crl_file", K_PATH, F(crl_file), 0, 0, 0},
    {"grpc", "min_tls_version", K_TLS_VERSION, F(min_tls_version), 0, 0, 0},
    {"grpc", "tls_reload_interval_s", K_UINT, F(tls_reload_interval_s), 1, 3600, 0},
    {"grpc", "max_concurrent_streams", K_UINT, F(max_concurrent_streams), 1, 10000, 0},
    {"grpc", "handshake_timeout_s", K_UINT, F(handshake_timeout_s), 1, 300, 0},
    {"grpc", "keepalive_time_s", K_UINT, F(keepalive_time_s), 1, KMS_GRPC_MAX_SECONDS, 0},
    {"grpc", "keepalive_timeout_s", K_UINT, F(keepalive_timeout_s), 1, 3600, 0},
    {"grpc", "min_ping_interval_s", K_UINT, F(min_ping_interval_s), 1, KMS_GRPC_MAX_SECONDS, 0},
    {"grpc", "max_connection_idle_s", K_UINT, F(max_connection_idle_s), 1, KMS_GRPC_MAX_SECONDS,
     0},
    {"grpc", "max_connection_age_s", K_UINT, F(max_connection_age_s), 1, KMS_GRPC_MAX_SECONDS,
     0},
    {"grpc", "max_connection_age_grace_s", K_UINT, F(max_connection_age_grace_s), 1,
     KMS_GRPC_MAX_SECONDS, 0},
    {"grpc", "request_timeout_s", K_UINT, F(request_timeout_s), 1, 3600, 0},
    {"raft", "listen", K_LISTEN, F(raft_listen), 0, 0, 1},
    {"raft", "snapshot_threshold", K_UINT, F(snapshot_threshold), 1, 1000000000,
     0},
    {"raft", "snapshot_trailing", K_UINT, F(snapshot_trailing), 0, 1000000000,
     0},
    {"raft", "election_timeout_ms", K_UINT, F(election_timeout_ms), 10, 600000,
     0},
    {"raft", "heartbeat_timeout_ms", K_UINT, F(heartbeat_timeout_ms), 1, 60000,
     0},
    {"raft", "max_staleness", K_UINT, F(max_staleness_s), 1, 3600, 0},
    {"hsm", "module", K_MODULE, F(hsm_module), 0, 0, 1},
    {"hsm", "token_label", K_LABEL, F(hsm_token_label), 0, 0, 1},
    {"hsm", "pin_file", K_PATH, F(hsm_pin_file), 0, 0, 0},
    {"hsm", "pin_env", K_ENV_NAME, F(hsm_pin_env), 0, 0, 0},
    {"hsm", "domain_key_label", K_STRING, F(domain_key_label), 0, 0, 0},
    {"hsm", "max_unwrapped_versions", K_UINT, F(max_unwrapped_versions), 16, 1000000, 0},
    {"authz", "admins", K_ADMINS, F(admins), 0, 0, 0},
    {"authz", "trust_domain", K_TRUST_DOMAIN, F(trust_domain), 0, 0, 0},
    {"cluster", "join", K_SEEDS, F(join_seeds), 0, 0, 0},
    {"cluster", "node_ca_file", K_PATH, F(node_ca_file), 0, 0, 1},
    /* The shortest rotation period SetRotationPolicy accepts: at most a year. */
    {"keys", "min_rotation_period", K_UINT, F(min_rotation_period_s), 1, 31622400, 0},
    /* Test clusters only: how many seconds a "day" of a deletion window is. */
    {"keys", "deletion_day_seconds", K_UINT, F(deletion_day_seconds), 1, 86400, 0},
    /* How often the leader looks for rotations and destructions due: the
     * supervisor ticks every 200 ms. */
    {"keys", "upkeep_interval_ms", K_UINT, F(upkeep_interval_ms), 200, 60000, 0},
    /* The first operators and their threshold (bootstrap only, like admins). */
    {"quorum", "operators", K_OPERATORS, F(operator_names), 0, 0, 0},
    {"quorum", "threshold", K_UINT, F(quorum_threshold), 1, 32, 0},
    {"audit", "path", K_PATH, F(audit_path), 0, 0, 0},
    /* Off is for benchmarks and tests only (docs/OPERATIONS.md). */
    {"audit", "enabled", K_BOOL, F(audit_enabled), 0, 0, 0},
    {"audit", "checkpoint_records", K_UINT, F(audit_checkpoint_records), 1, 10000000, 0},
    {"audit", "checkpoint_seconds", K_UINT, F(audit_checkpoint_seconds), 1, 86400, 0},
    {"region", "name", K_REGION, F(region), 0, 0, 0},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const char *const sections[] = {"node", "grpc", "raft", "hsm", "authz", "cluster",
				       "keys", "quorum", "audit", "region"};
#define N_SECTIONS (sizeof(sections) / sizeof(sections[0]))

struct parse_state {
	const char *path; /* as the caller named it, for messages */
	const char *dir;  /* absolute directory of the file */
	FILE *file;
	unsigned line; /* line the reader handed to inih last */
	int failed;    /* the first error is in err; later ones are ignored */
	int err_code;  /* its status */
	unsigned err_line; /* and its line */
	unsigned char seen[N_KEYS];
	int seen_trust_domain; /* [authz] trust_domain was set */
	kms_config *cfg;
	kms_err *err;
};

static int known_section(const char *name)
{
	for (size_t i = 0; i < N_SECTIONS; i++)
		if (strcmp(name, sections[i]) == 0)
			return 1;
	return 0;
}

/* Records the first error, prefixed with "<file>:<line>: ". Returns 0 for inih.
 */
static int fail_code(struct parse_state *st, int code, const char *detail)
{
	if (!st->failed) {
		kms_errf(st->err, code, "%s:%u: %s", st->path, st->line,
			 detail);
		st->err_code = code;
		st->err_line = st->line;
	}
	st->failed = 1;
	return 0;
}

static int fail_at(struct parse_state *st, const char *detail)
{
	return fail_code(st, KMS_ERR_CONFIG, detail);
}

static int fail_nomem(struct parse_state *st)
{
	return fail_code(st, KMS_ERR_NOMEM, "out of memory");
}

/*
 * Our own line reader for ini_parse_stream: libinih (built with a 200-byte
 * line buffer) would cut a long line in two and parse the tail as a line of
 * its own, shifting every line number after it. Here a long line, or one
 * with a NUL byte, is an error at its true line number, and a section header
 * naming an unknown section is refused even when the section holds no keys.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct parse_state *st = stream;
	size_t n = 0, limit = (size_t)num - 2; /* room for '\n' and NUL */
	int c, too_long = 0, has_nul = 0;
	char detail[160];
	const char *p;

	c = getc(st->file);
	if (c == EOF)
		return NULL;
	st->line++;
	for (; c != EOF && c != '\n'; c = getc(st->file)) {
		if (c == '\0')
			has_nul = 1;
		if (n < limit)
			str[n++] = (char)c;
		else if (c != '\r')
			too_long = 1;
	}
	if (too_long || has_nul) {
		snprintf(detail, sizeof(detail),
			 too_long ? "line is longer than %zu bytes"
				  : "line holds a NUL byte",
			 limit);
		fail_at(st, detail);
		n = 0;
	}
	str[n++] = '\n';
	str[n] = '\0';

	for (p = str; *p == ' ' || *p == '\t'; p++)
		;
	if (*p == '[' && !st->failed) {
		const char *end = strchr(p, ']');
		char name[64], q[KMS_QUOTE_MAX + 4];

		if (end != NULL && (size_t)(end - p - 1) < sizeof(name)) {
			memcpy(name, p + 1, (size_t)(end - p - 1));
			name[end - p - 1] = '\0';
			if (!known_section(name)) {
				snprintf(detail, sizeof(detail),
					 "unknown section [%s]",
					 kms_quote(name, q));
				fail_at(st, detail);
			}
		} else if (end != NULL) {
			fail_at(st, "unknown section (name too long)");
		}
	}
	return str;
}

static int parse_uint(const char *v, unsigned min, unsigned max, unsigned *out)
{
	unsigned long x;
	char *end;

	/* strtoul alone would accept " 7", "+7" and "-1" (as ULONG_MAX). */
	if (v[0] < '0' || v[0] > '9')
		return -1;
	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno != 0 || *end != '\0' || x < min || x > max)
		return -1;
	*out = (unsigned)x;
	return 0;
}

static int env_name_ok(const char *v)
{
	if (!((v[0] >= 'A' && v[0] <= 'Z') || (v[0] >= 'a' && v[0] <= 'z') ||
	      v[0] == '_'))
		return 0;
	for (const char *p = v + 1; *p != '\0'; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= '0' && *p <= '9') || *p == '_'))
			return 0;
	return 1;
}

static char *resolve_path(const char *dir, const char *v)
{
	size_t dl, vl;
	char *out;

	if (v[0] == '/')
		return kms_strdup(v);
	dl = strlen(dir);
	vl = strlen(v);
	out = kms_malloc(dl + 1 + vl + 1);
	if (out == NULL)
		return NULL;
	memcpy(out, dir, dl);
	out[dl] = '/';
	memcpy(out + dl + 1, v, vl + 1);
	return out;
}

/* Appends each comma-separated principal of one admins line. */
static int add_admins(struct parse_state *st, const char *v)
{
	kms_config *cfg = st->cfg;
	/* Room for a quoted entry and a whole sub-message; kms_errf cuts later.
	 */
	char detail[2 * KMS_ERRMSG_SIZE], q[KMS_QUOTE_MAX + 4];
	const char *p = v;

	for (;;) {
		const char *start, *end, *comma = strchr(p, ',');
		kms_err sub;
		char *item, **grown;

		end = comma != NULL ? comma : p + strlen(p);
		for (start = p;
		     start < end && (*start == ' ' || *start == '\t'); start++)
			;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if (start == end)
			return fail_at(st,
				       "empty entry in 'admins' in [authz]");
		if (cfg->n_admins >= ADMINS_MAX) {
			snprintf(detail, sizeof(detail),
				 "more than %d entries in 'admins' in [authz]",
				 ADMINS_MAX);
			return fail_at(st, detail);
		}
		item = kms_strndup(start, (size_t)(end - start));
		if (item == NULL)
			return fail_nomem(st);
		if (kms_principal_check(item, &sub) != KMS_OK) {
			snprintf(detail, sizeof(detail),
				 "'admins' entry '%s' in [authz]: %s",
				 kms_quote(item, q), sub.msg);
			kms_free(item);
			return fail_at(st, detail);
		}
		for (size_t i = 0; i < cfg->n_admins; i++) {
			if (strcmp(cfg->admins[i], item) == 0) {
				snprintf(detail, sizeof(detail),
					 "'admins' lists '%s' twice",
					 kms_quote(item, q));
				kms_free(item);
				return fail_at(st, detail);
			}
		}
		grown = kms_realloc(cfg->admins,
				    (cfg->n_admins + 1) * sizeof(*grown));
		if (grown == NULL) {
			kms_free(item);
			return fail_nomem(st);
		}
		cfg->admins = grown;
		cfg->admins[cfg->n_admins++] = item;
		if (comma == NULL)
			return 1;
		p = comma + 1;
	}
}

/*
 * Appends each comma-separated name:PUBKEYFILE of one operators line; the
 * file is resolved against the configuration's directory and read by the
 * node (the name's rules are the quorum's, checked there too).
 */
static int add_operators(struct parse_state *st, const char *v)
{
	kms_config *cfg = st->cfg;
	char detail[KMS_ERRMSG_SIZE], q[KMS_QUOTE_MAX + 4];
	const char *p = v;

	for (;;) {
		const char *start, *end, *comma = strchr(p, ','), *colon;
		char *name, *file, *item, **gn, **gf;

		end = comma != NULL ? comma : p + strlen(p);
		for (start = p; start < end && (*start == ' ' || *start == '\t'); start++)
			;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		colon = memchr(start, ':', (size_t)(end - start));
		if (colon == NULL || colon == start || colon + 1 == end) {
			item = kms_strndup(start, (size_t)(end - start));
			snprintf(detail, sizeof(detail),
				 "'operators' entry '%s' in [quorum] is not NAME:PUBKEYFILE",
				 kms_quote(item != NULL ? item : "", q));
			kms_free(item);
			return fail_at(st, detail);
		}
		if (cfg->n_operators >= 32)
			return fail_at(st, "more than 32 entries in 'operators' in [quorum]");
		name = kms_strndup(start, (size_t)(colon - start));
		item = kms_strndup(colon + 1, (size_t)(end - colon - 1));
		file = item != NULL ? resolve_path(st->dir, item) : NULL;
		kms_free(item);
		gn = kms_realloc(cfg->operator_names, (cfg->n_operators + 1) * sizeof(*gn));
		if (gn != NULL)
			cfg->operator_names = gn;
		gf = kms_realloc(cfg->operator_files, (cfg->n_operators + 1) * sizeof(*gf));
		if (gf != NULL)
			cfg->operator_files = gf;
		if (name == NULL || file == NULL || gn == NULL || gf == NULL) {
			kms_free(name);
			kms_free(file);
			return fail_nomem(st);
		}
		for (size_t i = 0; i < cfg->n_operators; i++) {
			if (strcmp(cfg->operator_names[i], name) == 0) {
				snprintf(detail, sizeof(detail),
					 "'operators' lists '%s' twice in [quorum]",
					 kms_quote(name, q));
				kms_free(name);
				kms_free(file);
				return fail_at(st, detail);
			}
		}
		cfg->operator_names[cfg->n_operators] = name;
		cfg->operator_files[cfg->n_operators++] = file;
		if (comma == NULL)
			return 1;
		p = comma + 1;
	}
}

/* Checks one value against its key's rule and stores it. Returns 1, or 0 after
 * fail_at. */
static int set_value(struct parse_state *st, const struct key_spec *k,
		     const char *v)
{
	char detail[KMS_ERRMSG_SIZE], q[KMS_QUOTE_MAX + 4];
	void *field = (char *)st->cfg + k->offset;
	char *copy;

	if (k->kind == K_ADMINS)
		return add_admins(st, v);
	if (k->kind == K_OPERATORS)
		return add_operators(st, v);
	if (v[0] == '\0') {
		snprintf(detail, sizeof(detail), "empty value for '%s' in [%s]",
			 k->name, k->section);
		return fail_at(st, detail);
	}
	switch (k->kind) {
	case K_UINT:
		if (parse_uint(v, k->min, k->max, field) != 0) {
			snprintf(detail, sizeof(detail),
				 "'%s' in [%s] must be a whole number from %u "
				 "to %u, not '%s'",
				 k->name, k->section, k->min, k->max,
				 kms_quote(v, q));
			return fail_at(st, detail);
		}
		return 1;
	case K_BOOL:
		/* Only the two words: a setting that weakens the node is spelled
		 * out, never guessed from "yes", "1" or "on". */
		if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
			snprintf(detail, sizeof(detail),
				 "'%s' in [%s] must be true or false, not '%s'", k->name,
				 k->section, kms_quote(v, q));
			return fail_at(st, detail);
		}
		*(int *)field = strcmp(v, "true") == 0;
		return 1;
	case K_LOGLEVEL:
		if (kms_log_level_parse(v) < 0) {
			snprintf(detail, sizeof(detail),
				 "'log_level' must be error, warn, info or "
				 "debug, not '%s'",
				 kms_quote(v, q));
			return fail_at(st, detail);
		}
		break;
	case K_LISTEN:
	case K_LISTEN_GRPC: {
		kms_err sub;
		char what[64];

		snprintf(what, sizeof(what), "'listen' in [%s]", k->section);
		if ((k->kind == K_LISTEN_GRPC ? kms_hostport_check_listen(v, what, &sub)
					      : kms_hostport_check(v, what, &sub)) != KMS_OK)
			return fail_at(st, sub.msg);
		break;
	}
	case K_TRUST_DOMAIN: {
		kms_err sub;
		char td[KMS_TRUST_DOMAIN_MAX + 1];

		if (kms_trust_domain_parse(v, td, sizeof(td), &sub) != KMS_OK) {
			snprintf(detail, sizeof(detail), "'trust_domain' in [authz]: %.200s", sub.msg);
			return fail_at(st, detail);
		}
		copy = kms_strdup(td);
		if (copy == NULL)
			return fail_nomem(st);
		*(char **)field = copy;
		return 1;
	}
	case K_TLS_KEY:
		if (strncmp(v, "pkcs11:", 7) != 0) {
			snprintf(detail, sizeof(detail),
				 "'tls_key' in [grpc] must be a pkcs11: URI "
				 "(RFC 7512), not '%s'",
				 kms_quote(v, q));
			return fail_at(st, detail);
		}
		break;
	case K_LABEL:
		if (strlen(v) > TOKEN_LABEL_MAX) {
			snprintf(
			    detail, sizeof(detail),
			    "'%s' in [%s] is longer than the %d bytes of a "
			    "PKCS#11 token label",
			    k->name, k->section, TOKEN_LABEL_MAX);
			return fail_at(st, detail);
		}
		break;
	case K_ENV_NAME:
		if (!env_name_ok(v)) {
			snprintf(detail, sizeof(detail),
				 "'%s' in [%s] is not an environment variable "
				 "name: '%s'",
				 k->name, k->section, kms_quote(v, q));
			return fail_at(st, detail);
		}
		break;
	case K_SEEDS: {
		char item[KMS_HOSTPORT_MAX + 1];
		const char *p = v;
		kms_err sub;

		/* Every comma-separated entry must be a host:port; a comma
		 * always has an entry after it. */
		for (;;) {
			size_t n = strcspn(p, ",");

			snprintf(item, sizeof(item), "%.*s", (int)n, p);
			if (n == 0 || n >= sizeof(item) ||
			    kms_hostport_check(item, "an entry of 'join' in [cluster]", &sub) !=
				    KMS_OK) {
				snprintf(detail, sizeof(detail),
					 "'join' in [cluster] must list host:port entries "
					 "separated by commas, not '%s'%s%.120s",
					 kms_quote(v, q), n == 0 ? "" : ": ",
					 n == 0 ? "" : sub.msg);
				return fail_at(st, detail);
			}
			p += n;
			if (*p == '\0')
				break;
			p++;
		}
		break;
	}
	case K_TLS_VERSION:
		if (strcmp(v, "1.2") != 0 && strcmp(v, "1.3") != 0) {
			snprintf(detail, sizeof(detail),
				 "'%s' in [%s] must be 1.2 or 1.3, not '%s'", k->name,
				 k->section, kms_quote(v, q));
			return fail_at(st, detail);
		}
		*(unsigned *)field = strcmp(v, "1.2") == 0 ? 12 : 13;
		return 1;
	case K_REGION: {
		kms_err sub;

		if (kms_region_name_check(v, &sub) != KMS_OK) {
			snprintf(detail, sizeof(detail), "'name' in [region]: %.200s", sub.msg);
			return fail_at(st, detail);
		}
		break;
	}
	case K_STRING:
	case K_PATH:
	case K_MODULE:
	case K_ADMINS:
	case K_OPERATORS:
		break;
	}

	/* A bare module name is left for dlopen to find in the library path. */
	if (k->kind == K_PATH ||
	    (k->kind == K_MODULE && strchr(v, '/') != NULL))
		copy = resolve_path(st->dir, v);
	else
		copy = kms_strdup(v);
	if (copy == NULL)
		return fail_nomem(st);
	*(char **)field = copy;
	return 1;
}

static int on_entry(void *user, const char *section, const char *name,
		    const char *value)
{
	struct parse_state *st = user;
	char detail[KMS_ERRMSG_SIZE], q1[KMS_QUOTE_MAX + 4], q2[KMS_QUOTE_MAX + 4];

	if (st->failed)
		return 0;
	/* Only libinih built with INI_CALL_HANDLER_ON_NEW_SECTION sends this.
	 */
	if (name == NULL) {
		if (!known_section(section)) {
			snprintf(detail, sizeof(detail), "unknown section [%s]",
				 kms_quote(section, q1));
			return fail_at(st, detail);
		}
		return 1;
	}
	if (section[0] == '\0') {
		snprintf(detail, sizeof(detail),
			 "key '%s' is outside any section", kms_quote(name, q1));
		return fail_at(st, detail);
	}
	if (!known_section(section)) {
		snprintf(detail, sizeof(detail), "unknown section [%s]",
			 kms_quote(section, q1));
		return fail_at(st, detail);
	}
	for (size_t i = 0; i < N_KEYS; i++) {
		if (strcmp(keys[i].section, section) != 0 ||
		    strcmp(keys[i].name, name) != 0)
			continue;
		/*
		 * A second value (a repeated key, or an indented continuation
		 * line) would silently replace the first; only admins adds up.
		 */
		if (st->seen[i] && keys[i].kind != K_ADMINS && keys[i].kind != K_OPERATORS) {
			snprintf(detail, sizeof(detail),
				 "duplicate key '%s' in [%s]", keys[i].name,
				 keys[i].section);
			return fail_at(st, detail);
		}
		st->seen[i] = 1;
		if (keys[i].kind == K_TRUST_DOMAIN)
			st->seen_trust_domain = 1;
		return set_value(st, &keys[i], value);
	}
	snprintf(detail, sizeof(detail), "unknown key '%s' in [%s]",
		 kms_quote(name, q1), kms_quote(section, q2));
	return fail_at(st, detail);
}

/*
 * The trust domain: [authz] trust_domain, or else the one the admins share.
 * Every admin must be in it, and must not be a node identity: principals
 * of another trust domain are never accepted, so such an entry could only
 * be a mistake.
 */
static int finish_trust_domain(struct parse_state *st)
{
	kms_config *cfg = st->cfg;
	kms_spiffe_id id;
	char td[KMS_TRUST_DOMAIN_MAX + 1], q[KMS_QUOTE_MAX + 4];

	for (size_t i = 0; i < cfg->n_admins; i++) {
		/* add_admins checked every entry. */
		if (kms_spiffe_parse_str(cfg->admins[i], 1, &id, NULL) != KMS_OK)
			return kms_errf(st->err, KMS_ERR_CONFIG, "%s: bad 'admins' entry",
					st->path);
		if (kms_spiffe_is_node_path(&id))
			return kms_errf(st->err, KMS_ERR_CONFIG,
					"%s: 'admins' entry '%s' in [authz] is a node identity "
					"(" KMS_NODE_PATH_PREFIX "...); an administrator is a "
					"person or a service",
					st->path, kms_quote(cfg->admins[i], q));
		if (cfg->trust_domain == NULL) {
			memcpy(td, id.id + sizeof(KMS_SPIFFE_SCHEME) - 1, id.td_len);
			td[id.td_len] = '\0';
			cfg->trust_domain = kms_strdup(td);
			if (cfg->trust_domain == NULL)
				return kms_errf(st->err, KMS_ERR_NOMEM, "out of memory");
		} else if (!kms_spiffe_in_trust_domain(&id, cfg->trust_domain)) {
			return kms_errf(st->err, KMS_ERR_CONFIG,
					"%s: 'admins' entry '%s' in [authz] is not in the trust "
					"domain '%s'%s",
					st->path, kms_quote(cfg->admins[i], q), cfg->trust_domain,
					st->seen_trust_domain ? " set by 'trust_domain'"
							      : " of the entries before it");
		}
	}
	if (cfg->trust_domain == NULL)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: set 'trust_domain' in [authz] (or list 'admins', whose trust "
				"domain it then is)",
				st->path);
	return KMS_OK;
}

/* After the whole file: required keys, the PIN source, defaults, cross-checks.
 */
static int finish(struct parse_state *st)
{
	kms_config *cfg = st->cfg;
	int pin_file = cfg->hsm_pin_file != NULL,
	    pin_env = cfg->hsm_pin_env != NULL;

	for (size_t i = 0; i < N_KEYS; i++)
		if (keys[i].required && !st->seen[i])
			return kms_errf(st->err, KMS_ERR_CONFIG,
					"%s: missing '%s' in [%s]", st->path,
					keys[i].name, keys[i].section);
	if ((cfg->n_operators > 0) != (cfg->quorum_threshold > 0))
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: set both 'operators' and 'threshold' in [quorum], or neither",
				st->path);
	if (cfg->quorum_threshold > cfg->n_operators)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: 'threshold' %u in [quorum] cannot be reached by %zu "
				"operator(s)",
				st->path, cfg->quorum_threshold, cfg->n_operators);
	if (pin_file && pin_env)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: set only one of 'pin_file' and 'pin_env' "
				"in [hsm]",
				st->path);
	if (!pin_file && !pin_env)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: missing 'pin_file' or 'pin_env' in [hsm]",
				st->path);
	/* Raft needs heartbeats well inside the election timeout. */
	if (cfg->heartbeat_timeout_ms >= cfg->election_timeout_ms)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: 'heartbeat_timeout_ms' (%u) must be less "
				"than 'election_timeout_ms' (%u) in [raft]",
				st->path, cfg->heartbeat_timeout_ms,
				cfg->election_timeout_ms);
	/*
	 * A follower that lost its leader waits an election timeout before it
	 * stands: a bound shorter than that would refuse crypto calls on every
	 * node at every ordinary leader change.
	 */
	if ((unsigned long long)cfg->max_staleness_s * 1000 <= cfg->election_timeout_ms)
		return kms_errf(st->err, KMS_ERR_CONFIG,
				"%s: 'max_staleness' (%u s) must be longer than "
				"'election_timeout_ms' (%u ms) in [raft]",
				st->path, cfg->max_staleness_s, cfg->election_timeout_ms);
	KMS_TRY(finish_trust_domain(st));
	if (cfg->log_level == NULL &&
	    (cfg->log_level = kms_strdup("info")) == NULL)
		return kms_errf(st->err, KMS_ERR_NOMEM, "out of memory");
	if (cfg->region == NULL && (cfg->region = kms_strdup(KMS_REGION_DEFAULT)) == NULL)
		return kms_errf(st->err, KMS_ERR_NOMEM, "out of memory");
	if (cfg->domain_key_label == NULL &&
	    (cfg->domain_key_label = kms_strdup("kmsd-domain-key")) == NULL)
		return kms_errf(st->err, KMS_ERR_NOMEM, "out of memory");
	return KMS_OK;
}

/* The absolute directory holding path, so relative paths survive a chdir. */
static int config_dir(const char *path, char out[PATH_MAX], kms_err *err)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
	} else if (slash == path) {
		snprintf(dir, sizeof(dir), "/");
	} else {
		size_t n = (size_t)(slash - path);

		if (n >= sizeof(dir))
			return kms_errf(err, KMS_ERR_CONFIG,
					"%s: path is too long", path);
		memcpy(dir, path, n);
		dir[n] = '\0';
	}
	if (realpath(dir, out) == NULL)
		return kms_errf(err, KMS_ERR_CONFIG,
				"%s: cannot resolve its directory: %s", path,
				strerror(errno));
	/* "/" + "/" + name would be "//name": harmless, but keep it clean. */
	if (strcmp(out, "/") == 0)
		out[0] = '\0';
	return KMS_OK;
}

/*
 * Whoever may write the configuration picks the PKCS#11 module kmsd loads,
 * the PIN source and the administrators. Others must not; a group that may
 * is usually a deliberate operators' group, so it is only warned about.
 * sb is the open file's, so the file checked is the file parsed.
 */
static int check_config_mode(const char *path, const struct stat *sb, kms_err *err)
{
	unsigned mode = (unsigned)(sb->st_mode & 07777);

	if (sb->st_mode & S_IWOTH)
		return kms_errf(err, KMS_ERR_CONFIG,
				"%s: writable by others (mode %04o): chmod o-w it",
				path, mode);
	if (sb->st_mode & S_IWGRP)
		KMS_LOG_W("%s: writable by its group (mode %04o): chmod g-w it "
			  "unless every member of the group may administer "
			  "this node",
			  path, mode);
	return KMS_OK;
}

int kms_config_load(const char *path, kms_config *cfg, kms_err *err)
{
	struct parse_state st;
	struct stat sb;
	char dir[PATH_MAX];
	int rc, line;

	KMS_ENSURE(cfg != NULL, err, KMS_ERR_INVALID, "config is missing");
	memset(cfg, 0, sizeof(*cfg));
	KMS_ENSURE(path != NULL && path[0] != '\0', err, KMS_ERR_CONFIG,
		   "no configuration file given");

	memset(&st, 0, sizeof(st));
	st.path = path;
	st.dir = dir;
	st.cfg = cfg;
	st.err = err;
	st.file = fopen(path, "re");
	if (st.file == NULL)
		return kms_errf(err, KMS_ERR_CONFIG, "%s: cannot open: %s",
				path, strerror(errno));
	if (fstat(fileno(st.file), &sb) != 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "%s: cannot stat: %s", path,
			      strerror(errno));
		goto out;
	}
	KMS_TRY_GOTO(rc, check_config_mode(path, &sb, err), out);
	cfg->grpc_workers = 4;
	cfg->snapshot_threshold = 8192;
	cfg->snapshot_trailing = 1024;
	cfg->election_timeout_ms = 500;
	cfg->heartbeat_timeout_ms = 50;
	cfg->max_staleness_s = 5;
	cfg->min_rotation_period_s = 60;
	cfg->deletion_day_seconds = 86400;
	cfg->upkeep_interval_ms = 1000;
	cfg->audit_enabled = 1;
	cfg->audit_checkpoint_records = 10000;
	cfg->audit_checkpoint_seconds = 10;
	cfg->min_tls_version = 12;
	cfg->max_unwrapped_versions = 4096; /* KMS_KEYRING_HANDLES_DEFAULT */
	cfg->tls_reload_interval_s = 5;
	cfg->max_concurrent_streams = 100;
	cfg->handshake_timeout_s = 10;
	cfg->keepalive_time_s = 60;
	cfg->keepalive_timeout_s = 20;
	cfg->min_ping_interval_s = 30;
	cfg->max_connection_idle_s = 300;
	cfg->max_connection_age_s = 3600;
	cfg->max_connection_age_grace_s = 30;
	cfg->request_timeout_s = 10;
	KMS_TRY_GOTO(rc, config_dir(path, dir, err), out);

	line = ini_parse_stream(read_line, &st, on_entry, &st);
	if (ferror(st.file) && !st.failed) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "%s: read error", path);
		goto out;
	}
	if (line == -2) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	/*
	 * libinih reports the first line it refused (syntax, or our handler);
	 * an earlier syntax error wins over the error we recorded.
	 */
	if (st.failed && (line <= 0 || (unsigned)line >= st.err_line)) {
		rc = st.err_code;
		goto out;
	}
	if (line > 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "%s:%d: expected '[section]' or 'key = value'",
			      path, line);
		goto out;
	}
	rc = finish(&st);

out:
	fclose(st.file);
	if (rc != KMS_OK)
		kms_config_free(cfg);
	return rc;
}

void kms_config_free(kms_config *cfg)
{
	if (cfg == NULL)
		return;
	kms_free(cfg->data_dir);
	kms_free(cfg->log_level);
	kms_free(cfg->grpc_listen);
	kms_free(cfg->ca_file);
	kms_free(cfg->cert_file);
	kms_free(cfg->tls_key_uri);
	kms_free(cfg->crl_file);
	kms_free(cfg->raft_listen);
	kms_free(cfg->hsm_module);
	kms_free(cfg->hsm_token_label);
	kms_free(cfg->hsm_pin_file);
	kms_free(cfg->hsm_pin_env);
	kms_free(cfg->domain_key_label);
	kms_free(cfg->region);
	kms_free(cfg->join_seeds);
	kms_free(cfg->node_ca_file);
	kms_free(cfg->trust_domain);
	kms_free(cfg->audit_path);
	for (size_t i = 0; i < cfg->n_admins; i++)
		kms_free(cfg->admins[i]);
	kms_free(cfg->admins);
	for (size_t i = 0; i < cfg->n_operators; i++) {
		kms_free(cfg->operator_names[i]);
		kms_free(cfg->operator_files[i]);
	}
	kms_free(cfg->operator_names);
	kms_free(cfg->operator_files);
	memset(cfg, 0, sizeof(*cfg));
}

static int read_pin_file(const char *path, char **pin, kms_err *err)
{
	/* One byte more than allowed, to see a file that grew after fstat. */
	char buf[PIN_MAX + 1];
	size_t n = 0;
	struct stat sb;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot open PIN file %s: %s", path,
				strerror(errno));
	if (fstat(fd, &sb) != 0) {
		rc =
		    kms_errf(err, KMS_ERR_CONFIG, "cannot stat PIN file %s: %s",
			     path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s is not a regular file", path);
		goto out;
	}
	if (sb.st_size > PIN_MAX) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s is larger than %d bytes", path,
			      PIN_MAX);
		goto out;
	}
	/*
	 * The PIN logs in to the HSM: only the user kmsd runs as may read it,
	 * or replace it. Checked on the descriptor read below, not on the path.
	 */
	if (sb.st_uid != geteuid()) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s belongs to uid %u, not to the user "
			      "kmsd runs as (uid %u): chown it to that user",
			      path, (unsigned)sb.st_uid, (unsigned)geteuid());
		goto out;
	}
	if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s is open to group or others (mode "
			      "%04o): chmod 600 it",
			      path, (unsigned)(sb.st_mode & 07777));
		goto out;
	}
	while (n < sizeof(buf)) {
		ssize_t got = read(fd, buf + n, sizeof(buf) - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = kms_errf(err, KMS_ERR_CONFIG,
				      "cannot read PIN file %s: %s", path,
				      strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > PIN_MAX) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s is larger than %d bytes", path,
			      PIN_MAX);
		goto out;
	}
	/* One line ending is the editor's, not the PIN's. */
	if (n > 0 && buf[n - 1] == '\n') {
		n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	if (n == 0) {
		rc =
		    kms_errf(err, KMS_ERR_CONFIG, "PIN file %s is empty", path);
		goto out;
	}
	if (memchr(buf, '\0', n) != NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "PIN file %s holds a NUL byte", path);
		goto out;
	}
	*pin = kms_strndup(buf, n);
	rc = *pin == NULL
		 ? kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the PIN")
		 : KMS_OK;

out:
	kms_cleanse(buf, sizeof(buf));
	close(fd);
	return rc;
}

static int copy_env_pin(const char *name, const char *v, char **pin, kms_err *err)
{
	size_t n = strnlen(v, PIN_MAX + 1);

	KMS_ENSURE(n > 0, err, KMS_ERR_CONFIG,
		   "environment variable %s (the HSM PIN) is empty", name);
	KMS_ENSURE(n <= PIN_MAX, err, KMS_ERR_CONFIG,
		   "environment variable %s (the HSM PIN) is longer than %d "
		   "bytes",
		   name, PIN_MAX);
	*pin = kms_strndup(v, n);
	KMS_ENSURE(*pin != NULL, err, KMS_ERR_NOMEM,
		   "out of memory reading the PIN");
	return KMS_OK;
}

/*
 * Wipes the value, then removes the variable. unsetenv alone only drops
 * the pointer from environ: the bytes would stay where they are, and for a
 * variable execve passed in that is the environment block on the stack,
 * which /proc/PID/environ shows and a core dump holds. The string getenv
 * returned is that block, or the copy setenv made: writable memory either
 * way (kmsd never putenv()s a literal). Like every change to the
 * environment this is not thread-safe: kmsd reads the PIN before it starts
 * a thread.
 */
static int scrub_env(const char *name, char *value, kms_err *err)
{
	kms_cleanse(value, strlen(value));
	if (unsetenv(name) != 0)
		return kms_errf(err, KMS_ERR_CONFIG,
				"cannot remove environment variable %s (the HSM "
				"PIN) from the environment: %s",
				name, strerror(errno));
	return KMS_OK;
}

int kms_config_read_pin(const kms_config *cfg, char **pin, kms_err *err)
{
	kms_err scrub_err = {0};
	char *v;
	int rc, scrub;

	KMS_ENSURE(cfg != NULL && pin != NULL, err, KMS_ERR_INVALID,
		   "no configuration to read the PIN from");
	*pin = NULL;
	if (cfg->hsm_pin_file != NULL)
		return read_pin_file(cfg->hsm_pin_file, pin, err);
	KMS_ENSURE(cfg->hsm_pin_env != NULL, err, KMS_ERR_CONFIG,
		   "no PIN source configured");
	v = getenv(cfg->hsm_pin_env);
	KMS_ENSURE(v != NULL, err, KMS_ERR_CONFIG,
		   "environment variable %s (the HSM PIN) is not set",
		   cfg->hsm_pin_env);
	rc = copy_env_pin(cfg->hsm_pin_env, v, pin, err);
	/* A refused value may be a secret all the same: it goes too. */
	scrub = scrub_env(cfg->hsm_pin_env, v, &scrub_err);
	if (rc != KMS_OK || scrub == KMS_OK)
		return rc;
	/* Read, but still in the environment: refuse rather than leave it. */
	kms_free_secret(*pin, strlen(*pin));
	*pin = NULL;
	return kms_errf(err, scrub_err.code, "%s", scrub_err.msg);
}
