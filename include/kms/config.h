/* config.h - the node configuration file (INI, parsed with libinih) and the PIN source. */
#ifndef KMS_CONFIG_H
#define KMS_CONFIG_H

#include <stddef.h>

#include "kms/error.h"

/*
 * Every string is owned by the config (kms_config_free). Relative paths are
 * taken relative to the directory holding the configuration file.
 */
typedef struct kms_config {
	/* [node] */
	unsigned node_id;        /* id = N, >= 1, required */
	char *data_dir;          /* data_dir = path, required (Raft log, snapshots) */
	char *log_level;         /* log_level = error|warn|info|debug, default info */
	int allow_core_dumps;    /* allow_core_dumps = true|false, default false: when
				    false kmsd sets RLIMIT_CORE to 0 and is not dumpable */

	/* [grpc] */
	char *grpc_listen;       /* listen = host:port, required */
	unsigned grpc_workers;   /* workers = N, default 4, 1..64 */
	char *ca_file;           /* ca_file = PEM bundle clients must chain to, required */
	char *cert_file;         /* cert_file = the node's certificate chain (PEM), required */
	char *tls_key_uri;       /* tls_key = RFC 7512 pkcs11: URI of the node key in the HSM, required */
	char *crl_file;          /* crl_file = PEM CRL of the client CA; optional */
	unsigned min_tls_version; /* min_tls_version = 1.2|1.3, stored as 12 or 13; default 12 */
	/* Seconds between looks at the TLS files (certificate, CAs, CRL) for a
	 * change; SIGHUP reloads at once too. Default 5. */
	unsigned tls_reload_interval_s;
	/* Limits of the gRPC server (docs/OPERATIONS.md says why each default). */
	unsigned max_concurrent_streams;  /* per connection, default 100 */
	unsigned handshake_timeout_s;     /* accept to the end of the TLS handshake, default 10 */
	unsigned keepalive_time_s;        /* ping an idle connection after, default 60 */
	unsigned keepalive_timeout_s;     /* ...and close it without an answer within, default 20 */
	unsigned min_ping_interval_s;     /* a client may ping no more often, default 30 */
	unsigned max_connection_idle_s;   /* close a connection without calls after, default 300 */
	unsigned max_connection_age_s;    /* close any connection after, default 3600 */
	unsigned max_connection_age_grace_s; /* ...giving its calls this long, default 30 */
	unsigned request_timeout_s;       /* a call's request message must arrive within, default 10 */

	/* [raft] */
	char *raft_listen;       /* listen = host:port, required */
	unsigned snapshot_threshold; /* snapshot_threshold = N entries, default 8192 */
	unsigned snapshot_trailing;  /* snapshot_trailing = N entries, default 1024 */
	unsigned election_timeout_ms;  /* default 500 */
	unsigned heartbeat_timeout_ms; /* default 50 */
	/* max_staleness = seconds, default 5, 1..3600, longer than the
	 * election timeout: a node that has not heard from a Raft leader (or,
	 * leading, from a majority of voters) for longer refuses crypto calls
	 * (docs/CONSISTENCY.md). */
	unsigned max_staleness_s;

	/* [hsm] */
	char *hsm_module;        /* module = path to the PKCS#11 module, required */
	char *hsm_token_label;   /* token_label = label, required */
	char *hsm_pin_file;      /* pin_file = path (one of pin_file, pin_env) */
	char *hsm_pin_env;       /* pin_env = NAME of an environment variable */
	char *domain_key_label;  /* domain_key_label = label, default "kmsd-domain-key" */
	unsigned max_unwrapped_versions; /* master-key versions kept unwrapped in the HSM at
					    once (16..1000000), default 4096 */

	/* [authz] */
	char **admins;           /* admins = comma-separated SPIFFE IDs: the cluster's first
				    administrators (bootstrap only; the list then lives in
				    the replicated state) */
	size_t n_admins;
	char *trust_domain;      /* trust_domain = NAME: the only trust domain whose SPIFFE
				    IDs are accepted; default: the admins' trust domain */

	/* [cluster] */
	char *join_seeds;        /* join = host:port[,host:port...]: gRPC addresses of
				    members; a node with an empty data_dir and this set
				    joins an existing cluster instead of starting one */
	char *node_ca_file;      /* node_ca_file = PEM of the CA that issues node
				    certificates (and only those), required */

	/* [keys] */
	unsigned min_rotation_period_s; /* min_rotation_period = seconds (1..366 days),
					   default 60: the shortest automatic
					   rotation period SetRotationPolicy takes */
	unsigned deletion_day_seconds;	/* deletion_day_seconds = 1..86400, default
					   86400: the length of a "day" of a deletion
					   window. For test clusters only: a real
					   cluster keeps 86400, so 7 days stays 7 days */
	unsigned upkeep_interval_ms; /* upkeep_interval_ms = 200..60000, default
					1000: how often the leader looks for keys
					due for rotation or destruction */

	/* [quorum] */
	char **operator_names;   /* operators = name:PUBKEYFILE[,...]: the cluster's first */
	char **operator_files;   /* operators and their Ed25519 public key files (PEM),
				    bootstrap only, like admins (docs/OPERATIONS.md "Quorum") */
	size_t n_operators;
	unsigned quorum_threshold; /* threshold = M, 1..32: approvals a root operation needs */
	/* [audit] (docs/OPERATIONS.md, "Audit log") */
	char *audit_path;	     /* path = file, default <data_dir>/audit.log */
	int audit_enabled;	     /* enabled = true|false, default true; false is for
					benchmarks and tests only: calls leave no record */
	unsigned audit_checkpoint_records; /* checkpoint_records = 1..10000000, default 10000 */
	unsigned audit_checkpoint_seconds; /* checkpoint_seconds = 1..86400, default 10: a
					      signed checkpoint after that many records, or
					      that long after the first unsigned one */

	/* [region] */
	char *region; /* name = the region this cluster is (kms_region_name_check),
			 default "default"; the first node's is the cluster's */
} kms_config;

/*
 * Parses path into cfg (zeroed first). Unknown sections or keys, bad numbers,
 * missing required keys or both/neither PIN source give KMS_ERR_CONFIG with
 * "<file>:<line>: ..." or the missing key named. A file others may write is
 * refused the same way (one its group may write is logged as a warning).
 * On failure cfg holds nothing to free.
 */
int kms_config_load(const char *path, kms_config *cfg, kms_err *err);

void kms_config_free(kms_config *cfg);

/*
 * Reads the PIN from the configured file (one trailing newline stripped) or
 * environment variable. *pin is owned by the caller and must be released
 * with kms_free_secret(*pin, strlen(*pin)). A missing file, an unset or empty
 * variable give KMS_ERR_CONFIG naming the source, never the PIN.
 * A variable that was set leaves the environment (unsetenv), its value
 * wiped in place first, whether the PIN was accepted or not: call this
 * before any thread starts, and only once.
 */
int kms_config_read_pin(const kms_config *cfg, char **pin, kms_err *err);

#endif
