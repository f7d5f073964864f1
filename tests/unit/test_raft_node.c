/* test_raft_node.c - the Raft glue on real canonical/raft and libuv in a temporary directory: commit, replay, snapshots, framing. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test_net.h"
#include "kms/alloc.h"
#include "kms/keyring.h"
#include "raft/raft_node.h"
#include "check_run.h"

static char dir[256];
static char data_dir[300];
static char listen_addr[64];
static kms_config cfg;

/* Collects the verdicts of submitted commands. */
struct verdicts {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int n;
	int status[256];
	uint64_t index[256];
	char msg[256][160];
};

static struct verdicts v;

static void on_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct verdicts *vs = arg;

	pthread_mutex_lock(&vs->mu);
	vs->status[vs->n] = status;
	vs->index[vs->n] = index;
	snprintf(vs->msg[vs->n], sizeof(vs->msg[0]), "%s", msg != NULL ? msg : "");
	vs->n++;
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->mu);
}

static void wait_verdicts(int n)
{
	pthread_mutex_lock(&v.mu);
	while (v.n < n)
		pthread_cond_wait(&v.cond, &v.mu);
	pthread_mutex_unlock(&v.mu);
}

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/kms-raft-XXXXXX", tmp != NULL ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(data_dir, sizeof(data_dir), "%s/data", dir);
	snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", kms_test_free_port());
	memset(&cfg, 0, sizeof(cfg));
	cfg.node_id = 1;
	cfg.data_dir = data_dir;
	cfg.raft_listen = listen_addr;
	cfg.snapshot_threshold = 1024;
	cfg.snapshot_trailing = 128;
	cfg.election_timeout_ms = 1000;
	cfg.heartbeat_timeout_ms = 100;
	cfg.max_staleness_s = 5;
	memset(&v, 0, sizeof(v));
	pthread_mutex_init(&v.mu, NULL);
	pthread_cond_init(&v.cond, NULL);
}

static void teardown(void)
{
	char cmd[320];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static kms_raft *start(kms_keyring **kr)
{
	kms_raft *r = NULL;
	kms_err err = {0};
	struct timespec pause = {0, 20 * 1000 * 1000};

	kms_raft_opts o = {.bootstrap = 1};

	ck_assert_int_eq(kms_keyring_new(kr, &err), KMS_OK);
	ck_assert_msg(kms_raft_start(&cfg, *kr, &o, &r, &err) == KMS_OK, "%s", err.msg);
	for (int i = 0; i < 250 && !kms_raft_ready(r); i++)
		nanosleep(&pause, NULL);
	ck_assert_msg(kms_raft_ready(r), "no leadership within 5 s");
	return r;
}

static void submit_create(kms_raft *r, const char *id)
{
	static const uint8_t wrapped[40] = {1, 2, 3};
	kms_buf cmd = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_create_key(id, "d", NULL, "spiffe://t/admin", 1, wrapped,
						    sizeof(wrapped), &cmd, &err),
			 KMS_OK);
	kms_raft_submit(r, cmd.data, cmd.len, on_done, &v);
	kms_buf_free(&cmd);
}

/* Ids of every length mod 8, so that frames need every amount of padding. */
static void key_id(char *out, size_t cap, int i)
{
	snprintf(out, cap, "key-%d-%.*s", i, i % 8, "xxxxxxx");
}

START_TEST(commits_survive_restart)
{
	kms_keyring *kr;
	kms_raft *r = start(&kr);
	char id[64];

	for (int i = 0; i < 24; i++) {
		key_id(id, sizeof(id), i);
		submit_create(r, id);
	}
	wait_verdicts(24);
	for (int i = 0; i < 24; i++)
		ck_assert_msg(v.status[i] == KMS_OK, "command %d: %d %s", i, v.status[i], v.msg[i]);
	ck_assert_uint_eq(kms_keyring_count(kr), 24);
	kms_raft_free(r);
	kms_keyring_free(kr);

	/* A new key ring rebuilt from the log alone holds every acknowledged key. */
	r = start(&kr);
	ck_assert_uint_eq(kms_keyring_count(kr), 24);
	for (int i = 0; i < 24; i++) {
		key_id(id, sizeof(id), i);
		ck_assert_msg(kms_keyring_has_key(kr, id), "%s lost", id);
	}
	kms_raft_free(r);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(view_and_wait_applied)
{
	kms_keyring *kr;
	kms_raft *r = start(&kr);
	kms_raft_view view;

	submit_create(r, "seen");
	wait_verdicts(1);
	ck_assert_int_eq(v.status[0], KMS_OK);
	ck_assert_uint_gt(v.index[0], 0);
	/* The applied index reaches the command's index; a later one times out. */
	ck_assert_int_eq(kms_raft_wait_applied(r, v.index[0], 2000), KMS_OK);
	ck_assert_int_eq(kms_raft_wait_applied(r, v.index[0] + 1000, 200), KMS_ERR_UNAVAILABLE);
	kms_raft_view_get(r, &view);
	ck_assert_str_eq(kms_raft_state_name(view.state), "leader");
	ck_assert_uint_eq(view.leader_id, 1);
	ck_assert_uint_ge(view.term, 1);
	ck_assert_uint_ge(view.applied_index, v.index[0]);
	ck_assert_uint_eq(view.n_servers, 1);
	ck_assert_str_eq(kms_raft_role_name(view.servers[0].role), "voter");
	ck_assert_str_eq(kms_raft_state_name(0), "unavailable");
	/* A cluster of one is its own majority: never stale. */
	ck_assert_int_eq(kms_raft_check_fresh(r, NULL), KMS_OK);
	kms_raft_free(r);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(joining_node_starts_empty)
{
	kms_keyring *kr;
	kms_raft *r = NULL;
	kms_raft_view view;
	kms_err err = {0};
	kms_raft_opts o = {.bootstrap = 0};
	struct timespec pause = {0, 300 * 1000 * 1000};

	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	ck_assert_msg(kms_raft_start(&cfg, kr, &o, &r, &err) == KMS_OK, "%s", err.msg);
	nanosleep(&pause, NULL);
	/* No configuration: it neither leads nor accepts writes until a leader
	 * adds it. */
	ck_assert(!kms_raft_ready(r));
	kms_raft_view_get(r, &view);
	ck_assert_uint_eq(view.n_servers, 0);
	ck_assert_uint_eq(view.leader_id, 0);
	submit_create(r, "refused");
	wait_verdicts(1);
	ck_assert_int_eq(v.status[0], KMS_ERR_UNAVAILABLE);
	/* It has heard from no leader: crypto calls would be refused. */
	ck_assert_int_eq(kms_raft_check_fresh(r, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_str_eq(err.msg, "node 1 has not heard from a Raft leader since it started "
				  "(max_staleness 5 s): refusing crypto calls until it joins its "
				  "cluster");
	kms_raft_free(r);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(snapshots_and_compaction_survive_restart)
{
	kms_keyring *kr;
	kms_raft *r;
	char id[64];

	cfg.snapshot_threshold = 8;
	cfg.snapshot_trailing = 2;
	r = start(&kr);
	for (int i = 0; i < 40; i++) {
		key_id(id, sizeof(id), i);
		submit_create(r, id);
	}
	wait_verdicts(40);
	kms_raft_free(r);
	kms_keyring_free(kr);
	r = start(&kr);
	ck_assert_uint_eq(kms_keyring_count(kr), 40);
	kms_raft_free(r);
	kms_keyring_free(kr);
	{
		char cmd[400];

		/* raft wrote at least one snapshot file. */
		snprintf(cmd, sizeof(cmd), "ls '%s' | grep -q '^snapshot-'", data_dir);
		ck_assert_int_eq(system(cmd), 0);
	}
}
END_TEST

START_TEST(refused_commands_report_and_change_nothing)
{
	kms_keyring *kr;
	kms_raft *r = start(&kr);
	static const uint8_t garbage[] = {0xff, 0xff, 0xff};

	submit_create(r, "once");
	wait_verdicts(1);
	submit_create(r, "once");
	wait_verdicts(2);
	kms_raft_submit(r, garbage, sizeof(garbage), on_done, &v);
	wait_verdicts(3);
	ck_assert_int_eq(v.status[0], KMS_OK);
	ck_assert_int_eq(v.status[1], KMS_ERR_EXISTS);
	ck_assert_int_eq(v.status[2], KMS_ERR_INVALID);
	ck_assert_uint_eq(kms_keyring_count(kr), 1);
	kms_raft_free(r);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(submit_after_stop_fails_at_once)
{
	kms_keyring *kr;
	kms_raft *r = start(&kr);

	kms_raft_stop(r);
	ck_assert(!kms_raft_ready(r));
	submit_create(r, "late");
	wait_verdicts(1);
	ck_assert_int_eq(v.status[0], KMS_ERR_UNAVAILABLE);
	ck_assert_str_eq(v.msg[0], "kmsd is shutting down");
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	kms_raft_free(r);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(start_refuses_unusable_directory)
{
	kms_keyring *kr;
	kms_raft *r = NULL;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	cfg.data_dir = (char *)"/proc/kms-no-such-dir/data";
	ck_assert_int_ne(kms_raft_start(&cfg, kr, NULL, &r, &err), KMS_OK);
	ck_assert_ptr_null(r);
	ck_assert_msg(strstr(err.msg, "/proc/kms-no-such-dir") != NULL, "%s", err.msg);
	kms_keyring_free(kr);
}
END_TEST

START_TEST(frame_roundtrip_and_rejects)
{
	uint8_t payload[32], frame[64];
	const uint8_t *p;
	size_t n;
	kms_err err = {0};

	for (size_t len = 0; len <= 20; len++) {
		size_t total = kms_raft_frame_size(len);

		ck_assert_uint_eq(total % 8, 0);
		ck_assert_uint_ge(total, len + 8);
		ck_assert_uint_lt(total, len + 16);
		memset(payload, (int)len, sizeof(payload));
		kms_raft_frame(payload, len, frame);
		ck_assert_int_eq(kms_raft_unframe(frame, total, &p, &n, &err), KMS_OK);
		ck_assert_uint_eq(n, len);
		ck_assert(memcmp(p, payload, len) == 0);
	}
	kms_raft_frame(payload, 5, frame);
	ck_assert_int_eq(kms_raft_unframe(frame, 7, &p, &n, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_raft_unframe(frame, 24, &p, &n, &err), KMS_ERR_INVALID);
	frame[7] = 200; /* a length past the end */
	ck_assert_int_eq(kms_raft_unframe(frame, 16, &p, &n, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "frame length") != NULL, "%s", err.msg);
	kms_raft_frame(payload, 5, frame);
	frame[15] = 0x1f; /* padding after a 5-byte payload must stay zero */
	ck_assert_int_eq(kms_raft_unframe(frame, 16, &p, &n, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "padding") != NULL, "%s", err.msg);
	kms_raft_frame(payload, 5, frame);
	frame[0] = 'X';
	ck_assert_int_eq(kms_raft_unframe(frame, 16, &p, &n, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "not a kmsd command frame") != NULL, "%s", err.msg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("raft_node");
	TCase *tc = tcase_create("raft");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, commits_survive_restart);
	tcase_add_test(tc, snapshots_and_compaction_survive_restart);
	tcase_add_test(tc, refused_commands_report_and_change_nothing);
	tcase_add_test(tc, submit_after_stop_fails_at_once);
	tcase_add_test(tc, start_refuses_unusable_directory);
	tcase_add_test(tc, frame_roundtrip_and_rejects);
	tcase_add_test(tc, view_and_wait_applied);
	tcase_add_test(tc, joining_node_starts_empty);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
