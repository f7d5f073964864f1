/* test_config.c - Check suite for the configuration file and the PIN sources (config.c), on files in a temporary directory. */
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/alloc.h"
#include "kms/config.h"
#include "kms/error.h"
#include "kms/log.h"
#include "check_run.h"

#define PIN_ENV "KMS_TEST_PIN"

static kms_err err;
static kms_config cfg;
static char dir[PATH_MAX];	 /* the temporary directory, fully resolved */
static char conf[PATH_MAX + 64]; /* dir + "/kmsd.conf" */
static char old_cwd[PATH_MAX];

/* One line of the full configuration, and the section it belongs to. */
struct conf_line {
	const char *section;
	const char *key;
	const char *text;
};

static const struct conf_line full[] = {
    {"node", "id", "id = 3"},
    {"node", "data_dir", "data_dir = /var/lib/kmsd"},
    {"node", "log_level", "log_level = debug"},
    {"grpc", "listen", "listen = 0.0.0.0:8443"},
    {"grpc", "workers", "workers = 8"},
    {"grpc", "ca_file", "ca_file = /etc/kmsd/ca.pem"},
    {"grpc", "cert_file", "cert_file = /etc/kmsd/node.pem"},
    {"grpc", "tls_key", "tls_key = pkcs11:token=kmsd;object=node;type=private"},
    {"raft", "listen", "listen = 10.0.0.3:9443"},
    {"raft", "snapshot_threshold", "snapshot_threshold = 4096"},
    {"raft", "snapshot_trailing", "snapshot_trailing = 256"},
    {"raft", "election_timeout_ms", "election_timeout_ms = 2000"},
    {"raft", "heartbeat_timeout_ms", "heartbeat_timeout_ms = 200"},
    {"hsm", "module", "module = /usr/lib/softhsm/libsofthsm2.so"},
    {"hsm", "token_label", "token_label = kmsd-node-3"},
    {"hsm", "pin_env", "pin_env = " PIN_ENV},
    {"hsm", "domain_key_label", "domain_key_label = dk-prod"},
    {"authz", "admins",
     "admins = spiffe://prod.example/ops/alice "
     ",\tspiffe://prod.example/ops/bob"},
    {"cluster", "node_ca_file", "node_ca_file = /etc/kmsd/node-ca.pem"},
    {"keys", "min_rotation_period", "min_rotation_period = 3600"},
    {"keys", "deletion_day_seconds", "deletion_day_seconds = 2"},
    {"keys", "upkeep_interval_ms", "upkeep_interval_ms = 250"},
};
#define N_FULL (sizeof(full) / sizeof(full[0]))

static const char *const required[][2] = {
    {"node", "id"},	 {"node", "data_dir"},	{"grpc", "listen"},
    {"grpc", "ca_file"}, {"grpc", "cert_file"}, {"grpc", "tls_key"},
    {"raft", "listen"},	 {"hsm", "module"},	{"hsm", "token_label"},
    {"cluster", "node_ca_file"},
};

static void write_file(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(text, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

static void write_conf(const char *text)
{
	write_file(conf, text, strlen(text));
}

/*
 * Writes the full configuration without the line (section, skip) and with
 * extra appended to section extra_section.
 */
static void write_full(const char *skip_section, const char *skip,
		       const char *extra_section, const char *extra)
{
	static const char *const sections[] = {"node", "grpc", "raft", "hsm",
					       "authz", "cluster", "keys", "quorum"};
	char text[4096];
	size_t n = 0;

	for (size_t s = 0; s < sizeof(sections) / sizeof(sections[0]); s++) {
		n += (size_t)snprintf(text + n, sizeof(text) - n, "[%s]\n",
				      sections[s]);
		for (size_t i = 0; i < N_FULL; i++) {
			if (strcmp(full[i].section, sections[s]) != 0)
				continue;
			if (skip != NULL &&
			    strcmp(skip_section, sections[s]) == 0 &&
			    strcmp(skip, full[i].key) == 0)
				continue;
			n += (size_t)snprintf(text + n, sizeof(text) - n,
					      "%s\n", full[i].text);
		}
		if (extra != NULL && strcmp(extra_section, sections[s]) == 0)
			n += (size_t)snprintf(text + n, sizeof(text) - n,
					      "%s\n", extra);
		n += (size_t)snprintf(text + n, sizeof(text) - n, "\n");
	}
	ck_assert_uint_lt(n, sizeof(text));
	write_conf(text);
}

static int rm_entry(const char *path, const struct stat *sb, int type,
		    struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	char tmpl[] = "/tmp/kms-test-config-XXXXXX";

	kms_err_clear(&err);
	memset(&cfg, 0, sizeof(cfg));
	kms_alloc_fail_reset();
	ck_assert_ptr_nonnull(getcwd(old_cwd, sizeof(old_cwd)));
	ck_assert_ptr_nonnull(mkdtemp(tmpl));
	ck_assert_ptr_nonnull(realpath(tmpl, dir));
	snprintf(conf, sizeof(conf), "%s/kmsd.conf", dir);
	/* Files written here are 0644 whatever umask the tests inherit: a
	 * looser one would make the configuration writable by others. */
	umask(022);
	unsetenv(PIN_ENV);
	/* Keep the output of the tests that provoke warnings quiet. */
	kms_log_set_level(KMS_LOG_ERROR);
}

static void teardown(void)
{
	kms_config_free(&cfg);
	kms_alloc_fail_reset();
	unsetenv(PIN_ENV);
	ck_assert_int_eq(chdir(old_cwd), 0);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#define ASSERT_MSG(needle)                                                     \
	ck_assert_msg(strstr(err.msg, needle) != NULL,                         \
		      "message '%s' lacks '%s'", err.msg, needle)

/* The load failed with KMS_ERR_CONFIG, said so exactly, and left nothing
 * behind. */
static void assert_load_fails(const char *want_msg)
{
	static const kms_config zero;

	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ck_assert_int_eq(err.code, KMS_ERR_CONFIG);
	ck_assert_str_eq(err.msg, want_msg);
	ck_assert(memcmp(&cfg, &zero, sizeof(cfg)) == 0);
}

/* Same, for messages that carry "<file>:<line>: " or "<file>: " first. */
static void assert_load_fails_at(int line, const char *detail)
{
	char want[sizeof(conf) + KMS_ERRMSG_SIZE + 32];

	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: %s", conf, line, detail);
	else
		snprintf(want, sizeof(want), "%s: %s", conf, detail);
	assert_load_fails(want);
}

/* --- loading --- */

START_TEST(test_full_config)
{
	write_full(NULL, NULL, NULL, NULL);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.node_id, 3);
	ck_assert_str_eq(cfg.data_dir, "/var/lib/kmsd");
	ck_assert_str_eq(cfg.log_level, "debug");
	ck_assert_int_eq(cfg.allow_core_dumps, 0);
	ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:8443");
	ck_assert_uint_eq(cfg.grpc_workers, 8);
	ck_assert_str_eq(cfg.ca_file, "/etc/kmsd/ca.pem");
	ck_assert_str_eq(cfg.cert_file, "/etc/kmsd/node.pem");
	ck_assert_str_eq(cfg.tls_key_uri,
			 "pkcs11:token=kmsd;object=node;type=private");
	ck_assert_str_eq(cfg.raft_listen, "10.0.0.3:9443");
	ck_assert_uint_eq(cfg.snapshot_threshold, 4096);
	ck_assert_uint_eq(cfg.snapshot_trailing, 256);
	ck_assert_uint_eq(cfg.election_timeout_ms, 2000);
	ck_assert_uint_eq(cfg.heartbeat_timeout_ms, 200);
	ck_assert_str_eq(cfg.hsm_module, "/usr/lib/softhsm/libsofthsm2.so");
	ck_assert_str_eq(cfg.hsm_token_label, "kmsd-node-3");
	ck_assert_ptr_null(cfg.hsm_pin_file);
	ck_assert_str_eq(cfg.hsm_pin_env, PIN_ENV);
	ck_assert_str_eq(cfg.domain_key_label, "dk-prod");
	ck_assert_uint_eq(cfg.n_admins, 2);
	ck_assert_str_eq(cfg.admins[0], "spiffe://prod.example/ops/alice");
	ck_assert_str_eq(cfg.admins[1], "spiffe://prod.example/ops/bob");
	/* The admins' trust domain is the cluster's when none is set. */
	ck_assert_str_eq(cfg.trust_domain, "prod.example");
	ck_assert_str_eq(cfg.node_ca_file, "/etc/kmsd/node-ca.pem");
	ck_assert_uint_eq(cfg.min_rotation_period_s, 3600);
	ck_assert_uint_eq(cfg.deletion_day_seconds, 2);
	ck_assert_uint_eq(cfg.upkeep_interval_ms, 250);
}
END_TEST

START_TEST(test_defaults)
{
	write_conf("; the smallest configuration\n"
		   "[node]\nid = 1\ndata_dir = /d\n"
		   "[grpc]\nlisten = [::]:443\nca_file = /ca\ncert_file = /c\n"
		   "tls_key = pkcs11:object=k\n"
		   "[raft]\nlisten = h:1\n"
		   "[hsm]\nmodule = libsofthsm2.so\ntoken_label = t\n"
		   "pin_file = /pin\n"
		   "[authz]\ntrust_domain = spiffe://td.example\n"
		   "[cluster]\nnode_ca_file = /nca\n");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_str_eq(cfg.log_level, "info");
	/* Core dumps stay off unless the file asks for them. */
	ck_assert_int_eq(cfg.allow_core_dumps, 0);
	ck_assert_uint_eq(cfg.grpc_workers, 4);
	ck_assert_uint_eq(cfg.snapshot_threshold, 8192);
	ck_assert_uint_eq(cfg.snapshot_trailing, 1024);
	ck_assert_uint_eq(cfg.election_timeout_ms, 500);
	ck_assert_uint_eq(cfg.heartbeat_timeout_ms, 50);
	ck_assert_uint_eq(cfg.max_staleness_s, 5);
	/* A deletion window counts real days unless a test cluster says not. */
	ck_assert_uint_eq(cfg.min_rotation_period_s, 60);
	ck_assert_uint_eq(cfg.deletion_day_seconds, 86400);
	ck_assert_uint_eq(cfg.upkeep_interval_ms, 1000);
	ck_assert_str_eq(cfg.domain_key_label, "kmsd-domain-key");
	ck_assert_uint_eq(cfg.n_admins, 0);
	ck_assert_ptr_null(cfg.admins);
	ck_assert_str_eq(cfg.grpc_listen, "[::]:443");
	/* A bare module name is left to dlopen's search path. */
	ck_assert_str_eq(cfg.hsm_module, "libsofthsm2.so");
	ck_assert_str_eq(cfg.hsm_pin_file, "/pin");
	ck_assert_ptr_null(cfg.hsm_pin_env);
	ck_assert_ptr_null(cfg.join_seeds);
	/* "spiffe://NAME" is taken as NAME. */
	ck_assert_str_eq(cfg.trust_domain, "td.example");
	/* TLS and the gRPC limits (docs/OPERATIONS.md). */
	ck_assert_ptr_null(cfg.crl_file);
	ck_assert_uint_eq(cfg.min_tls_version, 12);
	ck_assert_uint_eq(cfg.tls_reload_interval_s, 5);
	ck_assert_uint_eq(cfg.max_concurrent_streams, 100);
	ck_assert_uint_eq(cfg.handshake_timeout_s, 10);
	ck_assert_uint_eq(cfg.keepalive_time_s, 60);
	ck_assert_uint_eq(cfg.keepalive_timeout_s, 20);
	ck_assert_uint_eq(cfg.min_ping_interval_s, 30);
	ck_assert_uint_eq(cfg.max_connection_idle_s, 300);
	ck_assert_uint_eq(cfg.max_connection_age_s, 3600);
	ck_assert_uint_eq(cfg.max_connection_age_grace_s, 30);
	ck_assert_uint_eq(cfg.request_timeout_s, 10);
}
END_TEST

/* The TLS keys and the limits of [grpc]: set, and refused out of range. */
START_TEST(test_grpc_tls_and_limits)
{
	static const char *const good =
	    "crl_file = crl.pem\nmin_tls_version = 1.3\ntls_reload_interval_s = 2\n"
	    "max_concurrent_streams = 8\nhandshake_timeout_s = 3\nkeepalive_time_s = 40\n"
	    "keepalive_timeout_s = 4\nmin_ping_interval_s = 5\nmax_connection_idle_s = 6\n"
	    "max_connection_age_s = 7\nmax_connection_age_grace_s = 8\nrequest_timeout_s = 9";
	static const char *const bad[][2] = {
	    {"min_tls_version = 1.1", "'min_tls_version' in [grpc] must be 1.2 or 1.3, not '1.1'"},
	    {"min_tls_version = 1.30", "'min_tls_version' in [grpc] must be 1.2 or 1.3, not '1.30'"},
	    {"max_concurrent_streams = 0",
	     "'max_concurrent_streams' in [grpc] must be a whole number from 1 to 10000, not '0'"},
	    {"handshake_timeout_s = 301",
	     "'handshake_timeout_s' in [grpc] must be a whole number from 1 to 300, not '301'"},
	    {"request_timeout_s = 0",
	     "'request_timeout_s' in [grpc] must be a whole number from 1 to 3600, not '0'"},
	    {"max_connection_age_s = 2073601",
	     "'max_connection_age_s' in [grpc] must be a whole number from 1 to 2073600, not "
	     "'2073601'"},
	    {"tls_reload_interval_s = 0",
	     "'tls_reload_interval_s' in [grpc] must be a whole number from 1 to 3600, not '0'"},
	    {"crl_file =", "empty value for 'crl_file' in [grpc]"},
	};

	write_full(NULL, NULL, "grpc", good);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	{
		char want[PATH_MAX + 16];

		/* Relative to the configuration file, like every path. */
		snprintf(want, sizeof(want), "%s/crl.pem", dir);
		ck_assert_str_eq(cfg.crl_file, want);
	}
	ck_assert_uint_eq(cfg.min_tls_version, 13);
	ck_assert_uint_eq(cfg.tls_reload_interval_s, 2);
	ck_assert_uint_eq(cfg.max_concurrent_streams, 8);
	ck_assert_uint_eq(cfg.handshake_timeout_s, 3);
	ck_assert_uint_eq(cfg.keepalive_time_s, 40);
	ck_assert_uint_eq(cfg.keepalive_timeout_s, 4);
	ck_assert_uint_eq(cfg.min_ping_interval_s, 5);
	ck_assert_uint_eq(cfg.max_connection_idle_s, 6);
	ck_assert_uint_eq(cfg.max_connection_age_s, 7);
	ck_assert_uint_eq(cfg.max_connection_age_grace_s, 8);
	ck_assert_uint_eq(cfg.request_timeout_s, 9);
	kms_config_free(&cfg);
	write_full(NULL, NULL, "grpc", "min_tls_version = 1.2");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.min_tls_version, 12);
	kms_config_free(&cfg);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_full(NULL, NULL, "grpc", bad[i][0]);
		ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
		ASSERT_MSG(bad[i][1]);
	}
}
END_TEST

/* [keys]: the rotation floor and the test-only length of a deletion day. */
START_TEST(test_keys_limits)
{
	static const char *const bad[][3] = {
	    {"min_rotation_period", "min_rotation_period = 0",
	     "'min_rotation_period' in [keys] must be a whole number from 1 to 31622400, not '0'"},
	    {"deletion_day_seconds", "deletion_day_seconds = 86401",
	     "'deletion_day_seconds' in [keys] must be a whole number from 1 to 86400, not "
	     "'86401'"},
	    {"deletion_day_seconds", "deletion_day_seconds = 0",
	     "'deletion_day_seconds' in [keys] must be a whole number from 1 to 86400, not '0'"},
	    {"upkeep_interval_ms", "upkeep_interval_ms = 199",
	     "'upkeep_interval_ms' in [keys] must be a whole number from 200 to 60000, not '199'"},
	    {"upkeep_interval_ms", "upkeep_interval_ms = 1s",
	     "'upkeep_interval_ms' in [keys] must be a whole number from 200 to 60000, not '1s'"},
	};

	write_full("keys", "min_rotation_period", "keys", "min_rotation_period = 1");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.min_rotation_period_s, 1);
	ck_assert_uint_eq(cfg.deletion_day_seconds, 2);
	kms_config_free(&cfg);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_full("keys", bad[i][0], "keys", bad[i][1]);
		ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
		ASSERT_MSG(bad[i][2]);
	}
}
END_TEST

static const char *const base_conf =
    "[node]\nid = 2\ndata_dir = /d\n"
    "[grpc]\nlisten = h:1\nca_file = /ca\ncert_file = /c\ntls_key = pkcs11:object=k\n"
    "[raft]\nlisten = h:2\n"
    "[hsm]\nmodule = m.so\ntoken_label = t\npin_file = /pin\n"
    "[authz]\ntrust_domain = t\n[cluster]\nnode_ca_file = /nca\n";

START_TEST(test_cluster_join)
{
	char text[1024];

	snprintf(text, sizeof(text), "%s[cluster]\njoin = 10.0.0.1:7401,node2.example:7402\n",
		 base_conf);
	write_conf(text);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_str_eq(cfg.join_seeds, "10.0.0.1:7401,node2.example:7402");
}
END_TEST

START_TEST(test_cluster_join_bad)
{
	static const char *const bad[] = {"join = nowhere", "join = h:1,,h:2", "join = h:1,",
					  "join = h:99999", "seeds = h:1"};
	char text[1024];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kms_err_clear(&err);
		snprintf(text, sizeof(text), "%s[cluster]\n%s\n", base_conf, bad[i]);
		write_conf(text);
		ck_assert_msg(kms_config_load(conf, &cfg, &err) == KMS_ERR_CONFIG, "accepted '%s'",
			      bad[i]);
		ck_assert_msg(strstr(err.msg, i == 4 ? "unknown key 'seeds'" : "'join' in [cluster]") !=
				      NULL,
			      "%s: %s", bad[i], err.msg);
		ck_assert_ptr_null(cfg.join_seeds);
	}
}
END_TEST

START_TEST(test_region)
{
	char text[1024];

	write_conf(base_conf);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_str_eq(cfg.region, "default");
	kms_config_free(&cfg);
	snprintf(text, sizeof(text), "%s[region]\nname = eu-west-1\n", base_conf);
	write_conf(text);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_str_eq(cfg.region, "eu-west-1");
}
END_TEST

START_TEST(test_region_bad)
{
	static const char *const bad[] = {"name = EU", "name = eu_west", "name = -eu",
					  "name =", "zone = eu"};
	char text[1024];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kms_err_clear(&err);
		snprintf(text, sizeof(text), "%s[region]\n%s\n", base_conf, bad[i]);
		write_conf(text);
		ck_assert_msg(kms_config_load(conf, &cfg, &err) == KMS_ERR_CONFIG, "accepted '%s'",
			      bad[i]);
		ck_assert_msg(strstr(err.msg, i == 4 ? "unknown key 'zone'" : "[region]") != NULL,
			      "%s: %s", bad[i], err.msg);
		ck_assert_ptr_null(cfg.region);
	}
}
END_TEST

static const char *const relative_conf =
    "[node]\nid = 1\ndata_dir = data\n"
    "[grpc]\nlisten = unix:/run/kmsd.sock\nca_file = pki/ca.pem\n"
    "cert_file = ./pki/node.pem\ntls_key = pkcs11:object=k\n"
    "[raft]\nlisten = h:1\n"
    "[hsm]\nmodule = lib/p11.so\ntoken_label = t\npin_file = ../pin\n"
    "[authz]\ntrust_domain = t\n[cluster]\nnode_ca_file = pki/node-ca.pem\n";

static void assert_resolved(const char *base)
{
	char want[PATH_MAX + 32];

	snprintf(want, sizeof(want), "%s/data", base);
	ck_assert_str_eq(cfg.data_dir, want);
	snprintf(want, sizeof(want), "%s/pki/ca.pem", base);
	ck_assert_str_eq(cfg.ca_file, want);
	snprintf(want, sizeof(want), "%s/pki/node-ca.pem", base);
	ck_assert_str_eq(cfg.node_ca_file, want);
	snprintf(want, sizeof(want), "%s/./pki/node.pem", base);
	ck_assert_str_eq(cfg.cert_file, want);
	snprintf(want, sizeof(want), "%s/lib/p11.so", base);
	ck_assert_str_eq(cfg.hsm_module, want);
	snprintf(want, sizeof(want), "%s/../pin", base);
	ck_assert_str_eq(cfg.hsm_pin_file, want);
	/* Not paths: left as written. */
	ck_assert_str_eq(cfg.grpc_listen, "unix:/run/kmsd.sock");
	ck_assert_str_eq(cfg.tls_key_uri, "pkcs11:object=k");
}

START_TEST(test_relative_paths)
{
	char sub[PATH_MAX + 8], subconf[PATH_MAX + 32];

	/* Relative to the file's directory, not to the working directory. */
	snprintf(sub, sizeof(sub), "%s/etc", dir);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	snprintf(subconf, sizeof(subconf), "%s/kmsd.conf", sub);
	write_file(subconf, relative_conf, strlen(relative_conf));
	ck_assert_int_eq(kms_config_load(subconf, &cfg, &err), KMS_OK);
	assert_resolved(sub);
	kms_config_free(&cfg);

	/* A relative config path still gives absolute paths. */
	ck_assert_int_eq(chdir(dir), 0);
	ck_assert_int_eq(kms_config_load("etc/kmsd.conf", &cfg, &err), KMS_OK);
	assert_resolved(sub);
	kms_config_free(&cfg);
	ck_assert_int_eq(chdir(sub), 0);
	ck_assert_int_eq(kms_config_load("kmsd.conf", &cfg, &err), KMS_OK);
	assert_resolved(sub);
}
END_TEST

START_TEST(test_missing_required)
{
	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
		char detail[128];

		write_full(required[i][0], required[i][1], NULL, NULL);
		snprintf(detail, sizeof(detail), "missing '%s' in [%s]",
			 required[i][1], required[i][0]);
		assert_load_fails_at(0, detail);
	}
}
END_TEST

START_TEST(test_missing_section)
{
	write_conf("[node]\nid = 1\ndata_dir = /d\n");
	assert_load_fails_at(0, "missing 'listen' in [grpc]");
}
END_TEST

START_TEST(test_unknown_key)
{
	write_conf(
	    "[node]\nid = 1\n\n[grpc]\n# comment\nlisten = h:1\nx = 1\n");
	assert_load_fails_at(7, "unknown key 'x' in [grpc]");
	/* A key of another section is unknown here too. */
	write_full(NULL, NULL, "raft", "workers = 2");
	assert_load_fails_at(19, "unknown key 'workers' in [raft]");
}
END_TEST

START_TEST(test_unknown_section)
{
	write_conf("[node]\nid = 1\n[grcp]\nlisten = h:1\n");
	assert_load_fails_at(3, "unknown section [grcp]");
	/* Even with no keys in it. */
	write_conf("[node]\nid = 1\n\n[extra]\n");
	assert_load_fails_at(4, "unknown section [extra]");
	write_conf("id = 1\n[node]\n");
	assert_load_fails_at(1, "key 'id' is outside any section");
}
END_TEST

START_TEST(test_syntax_error)
{
	write_conf("[node]\nid = 1\nthis line has no equals sign\n");
	assert_load_fails_at(3, "expected '[section]' or 'key = value'");
	write_conf("[node\nid = 1\n");
	assert_load_fails_at(1, "expected '[section]' or 'key = value'");
}
END_TEST

START_TEST(test_long_line)
{
	char text[512];

	/* A line longer than libinih's buffer is refused at its own line. */
	snprintf(text, sizeof(text), "[node]\nid = 1\ndata_dir = /%0300d\n", 0);
	write_conf(text);
	assert_load_fails_at(3, "line is longer than 198 bytes");
}
END_TEST

START_TEST(test_nul_byte)
{
	static const char text[] = "[node]\nid = 1\0 2\n";

	write_file(conf, text, sizeof(text) - 1);
	assert_load_fails_at(2, "line holds a NUL byte");
}
END_TEST

START_TEST(test_duplicate_key)
{
	write_full(NULL, NULL, "grpc", "workers = 4");
	assert_load_fails_at(12, "duplicate key 'workers' in [grpc]");
}
END_TEST

START_TEST(test_bad_numbers)
{
	static const char *const bad[] = {
	    "0",  "65", "abc", "-1", "+3", "2x", "0x10", "99999999999999999999",
	    "4 4"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char line[64], detail[160];

		snprintf(line, sizeof(line), "workers = %s", bad[i]);
		write_full("grpc", "workers", "grpc", line);
		snprintf(detail, sizeof(detail),
			 "'workers' in [grpc] must be a whole number from 1 to "
			 "64, not '%s'",
			 bad[i]);
		assert_load_fails_at(11, detail);
	}
	/* The bounds themselves are fine. */
	write_full("grpc", "workers", "grpc", "workers = 64");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.grpc_workers, 64);
	kms_config_free(&cfg);
	write_full("grpc", "workers", "grpc", "workers = 1");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.grpc_workers, 1);
	kms_config_free(&cfg);

	write_full("node", "id", "node", "id = 0");
	assert_load_fails_at(4,
			     "'id' in [node] must be a whole number from 1 to "
			     "4294967295, not '0'");
	write_full("node", "id", "node", "id = 4294967296");
	assert_load_fails_at(4,
			     "'id' in [node] must be a whole number from 1 to "
			     "4294967295, not '4294967296'");
}
END_TEST

START_TEST(test_max_unwrapped_versions)
{
	write_full(NULL, NULL, NULL, NULL);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_unwrapped_versions, 4096);
	kms_config_free(&cfg);
	/* The bounds themselves are fine. */
	write_full(NULL, NULL, "hsm", "max_unwrapped_versions = 16");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_unwrapped_versions, 16);
	kms_config_free(&cfg);
	write_full(NULL, NULL, "hsm", "max_unwrapped_versions = 1000000");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_unwrapped_versions, 1000000);
	kms_config_free(&cfg);
}
END_TEST

START_TEST(test_max_unwrapped_versions_bad)
{
	static const char *const bad[] = {"0", "15", "1000001", "-1", "4k", "abc",
					  "99999999999999999999"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char line[64], detail[160];

		snprintf(line, sizeof(line), "max_unwrapped_versions = %s", bad[i]);
		write_full(NULL, NULL, "hsm", line);
		ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
		snprintf(detail, sizeof(detail),
			 ": 'max_unwrapped_versions' in [hsm] must be a whole number from 16 "
			 "to 1000000, not '%s'",
			 bad[i]);
		ASSERT_MSG(detail);
	}
	write_full(NULL, NULL, "hsm", "max_unwrapped_versions =");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(": empty value for 'max_unwrapped_versions' in [hsm]");
	write_full(NULL, NULL, "hsm", "max_unwrapped_versions = 64\nmax_unwrapped_versions = 64");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(": duplicate key 'max_unwrapped_versions' in [hsm]");
}
END_TEST

START_TEST(test_heartbeat_vs_election)
{
	write_full("raft", "heartbeat_timeout_ms", "raft",
		   "heartbeat_timeout_ms = 2000");
	assert_load_fails_at(0,
			     "'heartbeat_timeout_ms' (2000) must be less than "
			     "'election_timeout_ms' (2000) in [raft]");
}
END_TEST

/* [raft] max_staleness: seconds, 1..3600, longer than the election timeout. */
START_TEST(test_max_staleness)
{
	static const char *const bad[] = {"0", "-1", "3601", "99999999999", "abc", "5s", "1.5",
					  "0x10"};

	write_full(NULL, NULL, "raft", "max_staleness = 30");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_staleness_s, 30);
	kms_config_free(&cfg);
	write_full(NULL, NULL, "raft", "max_staleness = 3600");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_staleness_s, 3600);
	kms_config_free(&cfg);
	/* The full file's election timeout is 2000 ms: 3 s is longer. */
	write_full(NULL, NULL, "raft", "max_staleness = 3");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.max_staleness_s, 3);
	kms_config_free(&cfg);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char line[64], detail[160];

		snprintf(line, sizeof(line), "max_staleness = %s", bad[i]);
		write_full(NULL, NULL, "raft", line);
		snprintf(detail, sizeof(detail),
			 "'max_staleness' in [raft] must be a whole number from 1 to 3600, "
			 "not '%s'",
			 bad[i]);
		assert_load_fails_at(19, detail);
	}
	write_full(NULL, NULL, "raft", "max_staleness =");
	assert_load_fails_at(19, "empty value for 'max_staleness' in [raft]");
	write_full(NULL, NULL, "raft", "max_staleness = 2");
	assert_load_fails_at(0, "'max_staleness' (2 s) must be longer than "
				"'election_timeout_ms' (2000 ms) in [raft]");
	write_full(NULL, NULL, "raft", "max_staleness = 1");
	assert_load_fails_at(0, "'max_staleness' (1 s) must be longer than "
				"'election_timeout_ms' (2000 ms) in [raft]");
}
END_TEST

START_TEST(test_pin_source_both_or_neither)
{
	write_full(NULL, NULL, "hsm", "pin_file = pin");
	assert_load_fails_at(
	    0, "set only one of 'pin_file' and 'pin_env' in [hsm]");
	write_full("hsm", "pin_env", NULL, NULL);
	assert_load_fails_at(0, "missing 'pin_file' or 'pin_env' in [hsm]");
}
END_TEST

START_TEST(test_bad_values)
{
	write_full("node", "log_level", "node", "log_level = verbose");
	assert_load_fails_at(4,
			     "'log_level' must be error, warn, info or debug, "
			     "not 'verbose'");
	write_full("grpc", "listen", "grpc", "listen = 8443");
	assert_load_fails_at(11, "'listen' in [grpc] '8443' is not HOST:PORT");
	write_full("raft", "listen", "raft", "listen = h:70000");
	assert_load_fails_at(18, "'listen' in [raft] 'h:70000': the port must be a number "
				 "from 1 to 65535");
	write_full("raft", "listen", "raft", "listen = unix:/x");
	assert_load_fails_at(18, "'listen' in [raft] 'unix:/x': the port must be a number "
				 "from 1 to 65535");
	write_full("raft", "listen", "raft", "listen = h:0443");
	assert_load_fails_at(18, "'listen' in [raft] 'h:0443': the port must be a number "
				 "from 1 to 65535");
	write_full("raft", "listen", "raft", "listen = [fe80::x]:1");
	assert_load_fails_at(18, "'listen' in [raft] '[fe80::x]:1': the IPv6 address has a "
				 "character outside [0-9a-fA-F:.]");
	write_full("grpc", "tls_key", "grpc", "tls_key = /etc/kmsd/node.key");
	assert_load_fails_at(11, "'tls_key' in [grpc] must be a pkcs11: URI "
				 "(RFC 7512), not '/etc/kmsd/node.key'");
	write_full("hsm", "token_label", "hsm",
		   "token_label = 0123456789abcdef0123456789abcdefX");
	assert_load_fails_at(24, "'token_label' in [hsm] is longer than the 32 "
				 "bytes of a PKCS#11 token label");
	write_full("hsm", "pin_env", "hsm", "pin_env = 1PIN");
	assert_load_fails_at(24, "'pin_env' in [hsm] is not an environment "
				 "variable name: '1PIN'");
	write_full("node", "data_dir", "node", "data_dir =");
	assert_load_fails_at(4, "empty value for 'data_dir' in [node]");
}
END_TEST

START_TEST(test_allow_core_dumps)
{
	write_full(NULL, NULL, "node", "allow_core_dumps = true");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_int_eq(cfg.allow_core_dumps, 1);
	kms_config_free(&cfg);
	write_full(NULL, NULL, "node", "allow_core_dumps = false");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_int_eq(cfg.allow_core_dumps, 0);
}
END_TEST

START_TEST(test_allow_core_dumps_bad)
{
	static const char *const bad[] = {"yes", "1", "True", "FALSE", "on", "true-ish"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char line[64], detail[128];

		snprintf(line, sizeof(line), "allow_core_dumps = %s", bad[i]);
		write_full(NULL, NULL, "node", line);
		snprintf(detail, sizeof(detail),
			 "'allow_core_dumps' in [node] must be true or false, not '%s'", bad[i]);
		assert_load_fails_at(5, detail);
	}
	write_full(NULL, NULL, "node", "allow_core_dumps =");
	assert_load_fails_at(5, "empty value for 'allow_core_dumps' in [node]");
	write_full(NULL, NULL, "node", "allow_core_dumps = false\nallow_core_dumps = true");
	assert_load_fails_at(6, "duplicate key 'allow_core_dumps' in [node]");
}
END_TEST

START_TEST(test_admins)
{
	/* Entries may also continue on indented lines, or repeat the key. */
	write_full("authz", "admins", "authz",
		   "admins = spiffe://a/x, spiffe://a/y\n"
		   "         spiffe://a/z\n"
		   "admins = spiffe://a/w");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.n_admins, 4);
	ck_assert_str_eq(cfg.admins[0], "spiffe://a/x");
	ck_assert_str_eq(cfg.admins[1], "spiffe://a/y");
	ck_assert_str_eq(cfg.admins[2], "spiffe://a/z");
	ck_assert_str_eq(cfg.admins[3], "spiffe://a/w");
}
END_TEST

START_TEST(test_admins_invalid)
{
	write_full("authz", "admins", "authz",
		   "admins = spiffe://prod/ops/alice, https://prod/ops/bob");
	assert_load_fails_at(
	    27, "'admins' entry 'https://prod/ops/bob' in [authz]: 'https://prod/ops/bob' is not "
		"a SPIFFE ID: it does not start with spiffe:// (in lower case)");
	write_full("authz", "admins", "authz", "admins = spiffe://prod/ops/*");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("'spiffe://prod/ops/*' is not a SPIFFE ID");
	write_full("authz", "admins", "authz",
		   "admins = spiffe://a/x,,spiffe://b/y");
	assert_load_fails_at(27, "empty entry in 'admins' in [authz]");
	write_full("authz", "admins", "authz",
		   "admins = spiffe://a/x, spiffe://a/x");
	assert_load_fails_at(27, "'admins' lists 'spiffe://a/x' twice");
}
END_TEST

START_TEST(test_quorum_operators)
{
	char want[PATH_MAX + 32];

	write_full(NULL, NULL, "quorum",
		   "operators = alice:ops/alice.pub, bob:/etc/kmsd/bob.pub\n"
		   "operators = carol:carol.pub\n"
		   "threshold = 2");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_uint_eq(cfg.n_operators, 3);
	ck_assert_uint_eq(cfg.quorum_threshold, 2);
	ck_assert_str_eq(cfg.operator_names[0], "alice");
	ck_assert_str_eq(cfg.operator_names[2], "carol");
	snprintf(want, sizeof(want), "%s/ops/alice.pub", dir);
	ck_assert_str_eq(cfg.operator_files[0], want);
	ck_assert_str_eq(cfg.operator_files[1], "/etc/kmsd/bob.pub");
	kms_config_free(&cfg);
	/* Neither is fine (a cluster without operators); one alone is not. */
	write_full(NULL, NULL, "quorum", "operators = alice:a.pub");
	assert_load_fails_at(0, "set both 'operators' and 'threshold' in [quorum], or neither");
	write_full(NULL, NULL, "quorum", "threshold = 1");
	assert_load_fails_at(0, "set both 'operators' and 'threshold' in [quorum], or neither");
	write_full(NULL, NULL, "quorum", "operators = alice:a.pub, bob:b.pub\nthreshold = 3");
	assert_load_fails_at(0, "'threshold' 3 in [quorum] cannot be reached by 2 operator(s)");
	write_full(NULL, NULL, "quorum", "operators = alice\nthreshold = 1");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("'operators' entry 'alice' in [quorum] is not NAME:PUBKEYFILE");
	write_full(NULL, NULL, "quorum", "operators = alice:a.pub, alice:b.pub\nthreshold = 1");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("'operators' lists 'alice' twice");
	write_full(NULL, NULL, "quorum", "operators = alice:a.pub\nthreshold = 0");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("'threshold' in [quorum] must be a whole number from 1 to 32");
}
END_TEST

START_TEST(test_trust_domain)
{
	/* Set explicitly, every admin must be in it. */
	write_full(NULL, NULL, "authz", "trust_domain = prod.example");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_str_eq(cfg.trust_domain, "prod.example");
	kms_config_free(&cfg);
	write_full(NULL, NULL, "authz", "trust_domain = dev.example");
	assert_load_fails_at(0, "'admins' entry 'spiffe://prod.example/ops/alice' in [authz] is "
				"not in the trust domain 'dev.example' set by 'trust_domain'");
	/* Derived, the admins must agree on one. */
	write_full("authz", "admins", "authz", "admins = spiffe://a/x, spiffe://b/y");
	assert_load_fails_at(0, "'admins' entry 'spiffe://b/y' in [authz] is not in the trust "
				"domain 'a' of the entries before it");
	/* Bad names, and node identities as administrators. */
	write_full(NULL, NULL, "authz", "trust_domain = Prod.example");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("upper-case");
	write_full(NULL, NULL, "authz", "trust_domain = prod.example:443");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("port");
	write_full("authz", "admins", "authz", "admins = spiffe://prod.example/kmsd/node/1");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_ERR_CONFIG);
	ASSERT_MSG("is a node identity");
	/* Neither admins nor a trust domain: nothing to authenticate against. */
	write_full("authz", "admins", NULL, NULL);
	assert_load_fails_at(0, "set 'trust_domain' in [authz] (or list 'admins', whose trust "
				"domain it then is)");
}
END_TEST

START_TEST(test_missing_file)
{
	char want[sizeof(conf) + 64];

	snprintf(conf, sizeof(conf), "%s/absent.conf", dir);
	snprintf(want, sizeof(want),
		 "%s: cannot open: No such file or directory", conf);
	assert_load_fails(want);
	ck_assert_int_eq(kms_config_load(NULL, &cfg, &err), KMS_ERR_CONFIG);
	ck_assert_int_eq(kms_config_load(conf, NULL, &err), KMS_ERR_INVALID);
}
END_TEST

/* kms_config_load(conf) with the log (stderr) sent to a file, copied into
 * log; its status. */
static int load_capturing_log(char *log, size_t cap)
{
	char path[PATH_MAX + 16];
	int fd, saved, rc;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/log.txt", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	fflush(stderr);
	saved = dup(2);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_eq(dup2(fd, 2), 2);
	kms_log_set_level(KMS_LOG_WARN);
	rc = kms_config_load(conf, &cfg, &err);
	kms_log_set_level(KMS_LOG_ERROR);
	fflush(stderr);
	ck_assert_int_eq(dup2(saved, 2), 2);
	close(saved);
	n = pread(fd, log, cap - 1, 0);
	ck_assert_int_ge(n, 0);
	log[n] = '\0';
	close(fd);
	return rc;
}

START_TEST(test_config_writable_by_others_refused)
{
	static const mode_t bad[] = {0646, 0666, 0602, 0777};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char detail[96];

		write_full(NULL, NULL, NULL, NULL);
		ck_assert_int_eq(chmod(conf, bad[i]), 0);
		snprintf(detail, sizeof(detail), "writable by others (mode %04o): chmod o-w it",
			 (unsigned)bad[i]);
		assert_load_fails_at(0, detail);
	}
	/* Readable by all is fine: the file holds no secret. */
	ck_assert_int_eq(chmod(conf, 0644), 0);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
}
END_TEST

START_TEST(test_config_writable_by_group_warns)
{
	char log[2048], want[sizeof(conf) + 64];

	write_full(NULL, NULL, NULL, NULL);
	ck_assert_int_eq(chmod(conf, 0664), 0);
	ck_assert_int_eq(load_capturing_log(log, sizeof(log)), KMS_OK);
	snprintf(want, sizeof(want), "%s: writable by its group (mode 0664): chmod g-w it", conf);
	ck_assert_msg(strstr(log, want) != NULL, "log '%s' lacks '%s'", log, want);
	kms_config_free(&cfg);
	/* Not writable by the group: no warning. */
	ck_assert_int_eq(chmod(conf, 0644), 0);
	ck_assert_int_eq(load_capturing_log(log, sizeof(log)), KMS_OK);
	ck_assert_str_eq(log, "");
}
END_TEST

START_TEST(test_load_nomem)
{
	/* Every allocation point fails cleanly: no leak, nothing left in cfg.
	 */
	static const kms_config zero;
	int rc = KMS_ERR_NOMEM;

	write_full(NULL, NULL, NULL, NULL);
	for (unsigned n = 0; rc != KMS_OK; n++) {
		ck_assert_uint_lt(n, 200);
		kms_alloc_fail_after(n);
		rc = kms_config_load(conf, &cfg, &err);
		kms_alloc_fail_reset();
		if (rc != KMS_OK) {
			ck_assert(rc == KMS_ERR_CONFIG || rc == KMS_ERR_NOMEM);
			ck_assert(memcmp(&cfg, &zero, sizeof(cfg)) == 0);
		}
	}
	ck_assert_uint_eq(cfg.n_admins, 2);
}
END_TEST

/* --- the PIN --- */

static void load_with_pin_file(const char *content, size_t len)
{
	char pin_path[PATH_MAX + 16];

	kms_config_free(&cfg);
	write_full("hsm", "pin_env", "hsm", "pin_file = pin.txt");
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	snprintf(pin_path, sizeof(pin_path), "%s/pin.txt", dir);
	ck_assert_str_eq(cfg.hsm_pin_file, pin_path);
	if (content != NULL) {
		write_file(pin_path, content, len);
		ck_assert_int_eq(chmod(pin_path, 0600), 0);
	}
}

static void assert_pin(const char *want)
{
	char *pin = NULL;

	ck_assert_int_eq(kms_config_read_pin(&cfg, &pin, &err), KMS_OK);
	ck_assert_str_eq(pin, want);
	kms_free_secret(pin, strlen(pin));
}

static void assert_pin_fails(const char *needle, const char *secret)
{
	char *pin = (char *)"sentinel";

	ck_assert_int_eq(kms_config_read_pin(&cfg, &pin, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(needle);
	ck_assert_ptr_null(pin);
	if (secret != NULL && secret[0] != '\0')
		ck_assert_ptr_null(strstr(err.msg, secret));
}

START_TEST(test_pin_file_newline)
{
	load_with_pin_file("s3cret-PIN\n", 11);
	assert_pin("s3cret-PIN");
}
END_TEST

START_TEST(test_pin_file_crlf)
{
	load_with_pin_file("s3cret-PIN\r\n", 12);
	assert_pin("s3cret-PIN");
}
END_TEST

START_TEST(test_pin_file_no_newline)
{
	load_with_pin_file("s3cret-PIN", 10);
	assert_pin("s3cret-PIN");
}
END_TEST

START_TEST(test_pin_file_only_one_newline_stripped)
{
	load_with_pin_file("1234\n\n", 6);
	assert_pin("1234\n");
}
END_TEST

START_TEST(test_pin_file_bad)
{
	char big[300], *pin = NULL;

	load_with_pin_file("", 0);
	assert_pin_fails("is empty", NULL);
	ASSERT_MSG(cfg.hsm_pin_file);
	load_with_pin_file("\n", 1);
	assert_pin_fails("is empty", NULL);
	load_with_pin_file("12\0"
			   "34",
			   5);
	assert_pin_fails("NUL byte", NULL);

	/* 256 bytes is the limit, with or without a newline after it. */
	memset(big, 'p', sizeof(big));
	load_with_pin_file(big, 256);
	ck_assert_int_eq(kms_config_read_pin(&cfg, &pin, &err), KMS_OK);
	ck_assert_uint_eq(strlen(pin), 256);
	kms_free_secret(pin, strlen(pin));
	load_with_pin_file(big, 257);
	big[256] = '\0';
	assert_pin_fails("larger than 256 bytes", big);
}
END_TEST

START_TEST(test_pin_file_missing)
{
	char want[PATH_MAX + 64];

	load_with_pin_file(NULL, 0);
	snprintf(want, sizeof(want),
		 "cannot open PIN file %s/pin.txt: No such file or directory",
		 dir);
	assert_pin_fails(want, NULL);
}
END_TEST

START_TEST(test_pin_file_is_directory)
{
	char pin_path[PATH_MAX + 16];

	load_with_pin_file(NULL, 0);
	snprintf(pin_path, sizeof(pin_path), "%s/pin.txt", dir);
	ck_assert_int_eq(mkdir(pin_path, 0700), 0);
	assert_pin_fails("is not a regular file", NULL);
}
END_TEST

START_TEST(test_pin_file_open_to_others_refused)
{
	/* Any access for group or others: to read the PIN, or to replace it. */
	static const mode_t bad[] = {0644, 0640, 0604, 0660, 0620, 0602, 0610, 0601, 0666};
	char pin_path[PATH_MAX + 16], want[PATH_MAX + 96];

	load_with_pin_file("s3cret-PIN", 10);
	snprintf(pin_path, sizeof(pin_path), "%s/pin.txt", dir);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kms_err_clear(&err);
		ck_assert_int_eq(chmod(pin_path, bad[i]), 0);
		snprintf(want, sizeof(want),
			 "PIN file %s is open to group or others (mode %04o): chmod 600 it", pin_path,
			 (unsigned)bad[i]);
		assert_pin_fails(want, "s3cret-PIN");
	}
	/* Only its owner may read it: fine. */
	ck_assert_int_eq(chmod(pin_path, 0600), 0);
	assert_pin("s3cret-PIN");
	ck_assert_int_eq(chmod(pin_path, 0400), 0);
	assert_pin("s3cret-PIN");
}
END_TEST

START_TEST(test_pin_file_of_another_user_refused)
{
	char pin_path[PATH_MAX + 16], want[PATH_MAX + 128];

	/* Only root can give a file away to make the case. */
	if (geteuid() != 0)
		return;
	load_with_pin_file("s3cret-PIN", 10);
	snprintf(pin_path, sizeof(pin_path), "%s/pin.txt", dir);
	ck_assert_int_eq(chown(pin_path, 65534, (gid_t)-1), 0);
	snprintf(want, sizeof(want),
		 "PIN file %s belongs to uid 65534, not to the user kmsd runs as (uid 0): chown it "
		 "to that user",
		 pin_path);
	assert_pin_fails(want, "s3cret-PIN");
	/* Given back, it is read again. */
	ck_assert_int_eq(chown(pin_path, 0, (gid_t)-1), 0);
	assert_pin("s3cret-PIN");
}
END_TEST

/*
 * The variable is gone and the bytes of its old value are zero. glibc never
 * frees the "NAME=value" string setenv made (another setenv may hand it out
 * again), so the pointer getenv gave stays readable after unsetenv.
 */
static void assert_env_scrubbed(const char *old_value, size_t len)
{
	ck_assert_ptr_null(getenv(PIN_ENV));
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(old_value[i] == '\0', "byte %zu of the old value is 0x%02x", i,
			      (unsigned char)old_value[i]);
}

START_TEST(test_pin_env)
{
	const char *old;

	write_full(NULL, NULL, NULL, NULL);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	ck_assert_int_eq(setenv(PIN_ENV, "env-PIN-9876", 1), 0);
	old = getenv(PIN_ENV);
	assert_pin("env-PIN-9876");
	assert_env_scrubbed(old, strlen("env-PIN-9876"));
}
END_TEST

START_TEST(test_pin_env_other_sources_untouched)
{
	/* With the PIN in a file, a variable of that name is not kmsd's. */
	ck_assert_int_eq(setenv(PIN_ENV, "not-read", 1), 0);
	load_with_pin_file("1234", 4);
	assert_pin("1234");
	ck_assert_ptr_nonnull(getenv(PIN_ENV));
	ck_assert_str_eq(getenv(PIN_ENV), "not-read");
}
END_TEST

START_TEST(test_pin_env_bad)
{
	char big[300];
	const char *old;

	write_full(NULL, NULL, NULL, NULL);
	ck_assert_int_eq(kms_config_load(conf, &cfg, &err), KMS_OK);
	assert_pin_fails(
	    "environment variable " PIN_ENV " (the HSM PIN) is not set", NULL);
	ck_assert_int_eq(setenv(PIN_ENV, "", 1), 0);
	assert_pin_fails(
	    "environment variable " PIN_ENV " (the HSM PIN) is empty", NULL);
	ck_assert_ptr_null(getenv(PIN_ENV));
	memset(big, 'q', 257);
	big[257] = '\0';
	ck_assert_int_eq(setenv(PIN_ENV, big, 1), 0);
	old = getenv(PIN_ENV);
	assert_pin_fails("is longer than 256 bytes", big);
	/* Refused, and removed all the same: it may still be a secret. */
	assert_env_scrubbed(old, 257);
	ck_assert_int_eq(kms_config_read_pin(NULL, &(char *){NULL}, &err),
			 KMS_ERR_INVALID);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc;

	tc = tcase_create("load");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_full_config);
	tcase_add_test(tc, test_max_unwrapped_versions);
	tcase_add_test(tc, test_max_unwrapped_versions_bad);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_keys_limits);
	tcase_add_test(tc, test_grpc_tls_and_limits);
	tcase_add_test(tc, test_relative_paths);
	tcase_add_test(tc, test_missing_required);
	tcase_add_test(tc, test_missing_section);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_unknown_section);
	tcase_add_test(tc, test_syntax_error);
	tcase_add_test(tc, test_long_line);
	tcase_add_test(tc, test_nul_byte);
	tcase_add_test(tc, test_duplicate_key);
	tcase_add_test(tc, test_bad_numbers);
	tcase_add_test(tc, test_heartbeat_vs_election);
	tcase_add_test(tc, test_max_staleness);
	tcase_add_test(tc, test_pin_source_both_or_neither);
	tcase_add_test(tc, test_bad_values);
	tcase_add_test(tc, test_allow_core_dumps);
	tcase_add_test(tc, test_allow_core_dumps_bad);
	tcase_add_test(tc, test_admins);
	tcase_add_test(tc, test_admins_invalid);
	tcase_add_test(tc, test_quorum_operators);
	tcase_add_test(tc, test_trust_domain);
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_load_nomem);
	tcase_add_test(tc, test_config_writable_by_others_refused);
	tcase_add_test(tc, test_config_writable_by_group_warns);
	suite_add_tcase(s, tc);

	tc = tcase_create("pin");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_pin_file_newline);
	tcase_add_test(tc, test_pin_file_crlf);
	tcase_add_test(tc, test_pin_file_no_newline);
	tcase_add_test(tc, test_pin_file_only_one_newline_stripped);
	tcase_add_test(tc, test_pin_file_bad);
	tcase_add_test(tc, test_pin_file_missing);
	tcase_add_test(tc, test_pin_file_is_directory);
	tcase_add_test(tc, test_pin_file_open_to_others_refused);
	tcase_add_test(tc, test_pin_file_of_another_user_refused);
	tcase_add_test(tc, test_pin_env);
	tcase_add_test(tc, test_pin_env_other_sources_untouched);
	tcase_add_test(tc, test_pin_env_bad);
	tcase_add_test(tc, test_cluster_join);
	tcase_add_test(tc, test_cluster_join_bad);
	tcase_add_test(tc, test_region);
	tcase_add_test(tc, test_region_bad);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(config_suite());

	return kms_check_run(sr);
}
