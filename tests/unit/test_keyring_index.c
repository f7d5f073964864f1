/* test_keyring_index.c - Check suite for the key ring's index (keyring_index.c): order, lookups, inserts and splits, walks, against a reference; and ListKeys pages over many chunks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
/* The index stores struct kr_entry, whose type is the key ring's own. */
#include "state/keyring_internal.h"
#include "check_run.h"

#define ADMIN "spiffe://example.org/ns/ops/sa/admin"

/* --- entries: a record holding only its id is all the index reads ------- */

static struct kr_index ix;
static Kms__V1__KeyRecord **made; /* the records made, for freeing */
static size_t n_made, cap_made;

static struct kr_entry entry_of(const char *id)
{
	struct kr_entry e;
	Kms__V1__KeyRecord *r = malloc(sizeof(*r));

	ck_assert_ptr_nonnull(r);
	kms__v1__key_record__init(r);
	r->key_id = strdup(id);
	ck_assert_ptr_nonnull(r->key_id);
	if (n_made == cap_made) {
		cap_made = cap_made ? cap_made * 2 : 1024;
		made = realloc(made, cap_made * sizeof(*made));
		ck_assert_ptr_nonnull(made);
	}
	made[n_made++] = r;
	memset(&e, 0, sizeof(e));
	e.rec = r;
	return e;
}

static void setup(void)
{
	kms_alloc_fail_reset();
	kr_index_init(&ix);
}

static void teardown(void)
{
	kms_alloc_fail_reset();
	kr_index_free(&ix);
	for (size_t i = 0; i < n_made; i++) {
		free(made[i]->key_id);
		free(made[i]);
	}
	free(made);
	made = NULL;
	n_made = cap_made = 0;
}

static int insert(const char *id, kms_err *err)
{
	struct kr_entry e = entry_of(id);

	return kr_index_insert(&ix, &e, err);
}

static void insert_ok(const char *id)
{
	kms_err err = {0};

	ck_assert_msg(insert(id, &err) == KMS_OK, "insert %s: %s", id, err.msg);
}

static void append_ok(const char *id)
{
	struct kr_entry e = entry_of(id);
	kms_err err = {0};

	ck_assert_msg(kr_index_append(&ix, &e, &err) == KMS_OK, "append %s: %s", id, err.msg);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * The index holds exactly want[0..n) (sorted) in that order, every one
 * found at the entry the walk gives, every chunk non-empty and within its
 * bound, and the count right.
 */
static void check_against(char **want, size_t n)
{
	struct kr_cursor cur;
	struct kr_entry *e;
	size_t i = 0, in_chunks = 0;

	ck_assert_uint_eq(ix.n, n);
	for (kr_index_first(&ix, &cur); (e = kr_cursor_next(&cur)) != NULL; i++) {
		ck_assert_uint_lt(i, n);
		ck_assert_str_eq(e->rec->key_id, want[i]);
		ck_assert_ptr_eq(kr_index_find(&ix, want[i]), e);
	}
	ck_assert_uint_eq(i, n);
	/* A finished walk stays finished. */
	ck_assert_ptr_null(kr_cursor_next(&cur));
	for (i = 0; i < ix.n_chunks; i++) {
		struct kr_cursor one = {&ix, i, 0};
		size_t k = 0;

		/* Walk one chunk by hand: it ends when the walk moves on. */
		while (one.chunk == i && kr_cursor_next(&one) != NULL)
			k++;
		ck_assert_uint_gt(k, 0);
		ck_assert_uint_le(k, KR_CHUNK_MAX);
		in_chunks += k;
	}
	ck_assert_uint_eq(in_chunks, n);
	if (n > 0)
		ck_assert_str_eq(kr_index_last(&ix)->rec->key_id, want[n - 1]);
	else
		ck_assert_ptr_null(kr_index_last(&ix));
}

/* The first id after key in want[0..n), or NULL: what seek_after must give. */
static const char *after_in(char **want, size_t n, const char *key)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(want[mid], key) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n ? want[lo] : NULL;
}

static void check_seek(char **want, size_t n, const char *key)
{
	struct kr_cursor cur;
	struct kr_entry *e;
	const char *w = after_in(want, n, key);

	kr_index_seek_after(&ix, key, &cur);
	e = kr_cursor_next(&cur);
	if (w == NULL)
		ck_assert_msg(e == NULL, "seek after '%s' gave '%s', want the end", key,
			      e->rec->key_id);
	else
		ck_assert_msg(e != NULL && strcmp(e->rec->key_id, w) == 0,
			      "seek after '%s' gave '%s', want '%s'", key,
			      e != NULL ? e->rec->key_id : "(end)", w);
}

/* --- tests --------------------------------------------------------------- */

START_TEST(test_empty)
{
	struct kr_cursor cur;

	ck_assert_uint_eq(ix.n, 0);
	ck_assert_ptr_null(kr_index_find(&ix, "a"));
	ck_assert_ptr_null(kr_index_find(&ix, ""));
	ck_assert_ptr_null(kr_index_find(&ix, NULL));
	ck_assert_ptr_null(kr_index_last(&ix));
	kr_index_first(&ix, &cur);
	ck_assert_ptr_null(kr_cursor_next(&cur));
	kr_index_seek_after(&ix, "", &cur);
	ck_assert_ptr_null(kr_cursor_next(&cur));
	kr_index_seek_after(&ix, NULL, &cur);
	ck_assert_ptr_null(kr_cursor_next(&cur));
}
END_TEST

START_TEST(test_front_middle_end)
{
	char *want[] = {"a", "f", "m", "z"};
	kms_err err = {0};

	insert_ok("m");
	insert_ok("a"); /* front */
	insert_ok("z"); /* end */
	insert_ok("f"); /* middle */
	check_against(want, 4);
	/* Absent ids, between, before and after all, and the empty id. */
	ck_assert_ptr_null(kr_index_find(&ix, "b"));
	ck_assert_ptr_null(kr_index_find(&ix, "0"));
	ck_assert_ptr_null(kr_index_find(&ix, "zz"));
	ck_assert_ptr_null(kr_index_find(&ix, ""));
	ck_assert_ptr_null(kr_index_find(&ix, NULL));
	check_seek(want, 4, "");
	check_seek(want, 4, "a");
	check_seek(want, 4, "b");
	check_seek(want, 4, "m");
	check_seek(want, 4, "z");
	check_seek(want, 4, "zz");
	/* Bad input: an id already there is refused by name, nothing changes. */
	ck_assert_int_eq(insert("f", &err), KMS_ERR_EXISTS);
	ck_assert_ptr_nonnull(strstr(err.msg, "key 'f' already exists"));
	check_against(want, 4);
}
END_TEST

START_TEST(test_append_refuses_out_of_order)
{
	char *want[] = {"b", "c"};
	struct kr_entry e;
	kms_err err = {0};

	append_ok("b");
	append_ok("c");
	e = entry_of("c");
	ck_assert_int_eq(kr_index_append(&ix, &e, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "'c' does not come after key 'c'"));
	e = entry_of("a");
	ck_assert_int_eq(kr_index_append(&ix, &e, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "'a' does not come after key 'c'"));
	check_against(want, 2);
}
END_TEST

/* Ids k0000 .. in steps of two: the odd ones fall between. */
static char **even_ids(size_t n)
{
	char **ids = calloc(n, sizeof(*ids));

	ck_assert_ptr_nonnull(ids);
	for (size_t i = 0; i < n; i++) {
		char id[16];

		snprintf(id, sizeof(id), "k%06zu", 2 * i + 2);
		ids[i] = strdup(id);
		ck_assert_ptr_nonnull(ids[i]);
	}
	return ids;
}

static void ids_free(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

/* Adds id to the sorted want[0..*n) (room for it is the caller's). */
static void want_add(char **want, size_t *n, const char *id)
{
	size_t i = 0;

	while (i < *n && strcmp(want[i], id) < 0)
		i++;
	memmove(&want[i + 1], &want[i], (*n - i) * sizeof(*want));
	want[i] = strdup(id);
	ck_assert_ptr_nonnull(want[i]);
	(*n)++;
}

START_TEST(test_splits)
{
	size_t n = 3 * KR_CHUNK_MAX, n_want = n;
	char **ids = even_ids(n);
	char **want = calloc(n + 8, sizeof(*want));
	char mid[16];

	ck_assert_ptr_nonnull(want);
	for (size_t i = 0; i < n; i++) {
		append_ok(ids[i]);
		want[i] = strdup(ids[i]);
	}
	/* A sorted build fills its chunks whole. */
	ck_assert_uint_eq(ix.n_chunks, 3);
	check_against(want, n_want);

	/* Into the middle of a full chunk: it splits in two. */
	snprintf(mid, sizeof(mid), "k%06d", 2 * (KR_CHUNK_MAX + KR_CHUNK_MAX / 3) + 1);
	insert_ok(mid);
	want_add(want, &n_want, mid);
	ck_assert_uint_eq(ix.n_chunks, 4);
	check_against(want, n_want);
	/* Past the last id, the last chunk full: a chunk of its own. */
	insert_ok("k999999");
	want_add(want, &n_want, "k999999");
	ck_assert_uint_eq(ix.n_chunks, 5);
	/* Before the first id, the first chunk full: the same at the front. */
	insert_ok("k000000");
	want_add(want, &n_want, "k000000");
	ck_assert_uint_eq(ix.n_chunks, 6);
	check_against(want, n_want);
	/* Between two chunks' ids (the last of chunk 0 and the first of 1). */
	snprintf(mid, sizeof(mid), "k%06d", 2 * KR_CHUNK_MAX + 1);
	insert_ok(mid);
	want_add(want, &n_want, mid);
	check_against(want, n_want);
	for (size_t i = 0; i < n; i += 97) {
		char odd[16];

		check_seek(want, n_want, ids[i]);
		snprintf(odd, sizeof(odd), "k%06zu", 2 * i + 3);
		check_seek(want, n_want, odd);
	}
	ids_free(ids, n);
	ids_free(want, n_want);
}
END_TEST

START_TEST(test_out_of_memory_changes_nothing)
{
	size_t n = KR_CHUNK_MAX;
	char **ids = even_ids(n);
	char odd[16];
	kms_err err = {0};

	for (size_t i = 0; i < n; i++)
		append_ok(ids[i]);
	snprintf(odd, sizeof(odd), "k%06d", 101);
	{
		struct kr_entry e = entry_of(odd);

		/* The split needs a chunk: none to be had. */
		kms_alloc_fail_after(0);
		ck_assert_int_eq(kr_index_insert(&ix, &e, &err), KMS_ERR_NOMEM);
		kms_alloc_fail_reset();
	}
	check_against(ids, n);
	ck_assert_ptr_null(kr_index_find(&ix, odd));
	insert_ok(odd);
	ck_assert_ptr_nonnull(kr_index_find(&ix, odd));
	ck_assert_uint_eq(ix.n, n + 1);
	ids_free(ids, n);
}
END_TEST

/*
 * A chunk grows its room in steps: an insert that finds no room and no
 * memory fails whole, one that finds room needs no memory.
 */
START_TEST(test_growth_without_memory)
{
	char **want = calloc(KR_CHUNK_MAX, sizeof(*want));
	size_t n = 0, refused = 0, taken = 0;

	ck_assert_ptr_nonnull(want);
	while (n < KR_CHUNK_MAX - 1) {
		char id[16];
		struct kr_entry e;
		kms_err err = {0};
		int rc;

		/* From the end backwards: each id goes in front of the others. */
		snprintf(id, sizeof(id), "g%06zu", (size_t)KR_CHUNK_MAX - n);
		e = entry_of(id);
		kms_alloc_fail_after(0);
		rc = kr_index_insert(&ix, &e, &err);
		kms_alloc_fail_reset();
		if (rc == KMS_OK) {
			taken++;
		} else {
			ck_assert_int_eq(rc, KMS_ERR_NOMEM);
			ck_assert_ptr_nonnull(strstr(err.msg, "out of memory"));
			refused++;
			check_against(want, n);
			insert_ok(id);
		}
		memmove(&want[1], &want[0], n * sizeof(*want));
		want[0] = strdup(id);
		n++;
		check_against(want, n);
	}
	ck_assert_uint_gt(refused, 1);
	ck_assert_uint_gt(taken, refused);
	ck_assert_uint_eq(ix.n_chunks, 1);
	ids_free(want, n);
}
END_TEST

/* xorshift: the same sequence on every run, so a failure repeats. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

START_TEST(test_random_inserts_against_reference)
{
	enum { N = 100000 };
	char **ref = calloc(N, sizeof(*ref));
	char **order = calloc(N, sizeof(*order));
	kms_err err = {0};
	size_t n = 0;

	ck_assert_ptr_nonnull(ref);
	ck_assert_ptr_nonnull(order);
	/* Distinct ids of varied length: the number, then a random tail. */
	for (size_t i = 0; i < N; i++) {
		char id[48];

		snprintf(id, sizeof(id), "key-%llx-%zu",
			 (unsigned long long)(rnd() >> (rnd() % 48)), i);
		ref[i] = strdup(id);
		ck_assert_ptr_nonnull(ref[i]);
		order[i] = ref[i];
	}
	/* The insert order is ref's creation order, random in key order. */
	for (size_t i = 0; i < N; i++) {
		insert_ok(order[i]);
		n++;
		if (n % 25000 == 0) {
			char **sorted = calloc(n, sizeof(*sorted));

			ck_assert_ptr_nonnull(sorted);
			memcpy(sorted, order, n * sizeof(*sorted));
			qsort(sorted, n, sizeof(*sorted), cmp_str);
			check_against(sorted, n);
			free(sorted);
		}
	}
	qsort(ref, N, sizeof(*ref), cmp_str);
	check_against(ref, N);
	/* Every id again: refused, and nothing moved. */
	for (size_t i = 0; i < N; i += 1000)
		ck_assert_int_eq(insert(ref[i], &err), KMS_ERR_EXISTS);
	ck_assert_uint_eq(ix.n, N);
	/* Absent ids: an id and one more byte, one byte less. */
	for (size_t i = 0; i < N; i += 7) {
		char id[64];

		snprintf(id, sizeof(id), "%s!", ref[i]);
		ck_assert_ptr_null(kr_index_find(&ix, id));
		check_seek(ref, N, id);
		snprintf(id, sizeof(id), "%.*s", (int)strlen(ref[i]) - 1, ref[i]);
		if (kr_index_find(&ix, id) == NULL)
			check_seek(ref, N, id);
		check_seek(ref, N, ref[i]);
	}
	/* Random inserts leave chunks at least half full: memory stays near
	 * one array's. */
	ck_assert_uint_le(ix.n_chunks * (KR_CHUNK_MAX / 2), N + KR_CHUNK_MAX);
	ids_free(ref, N);
	free(order);
}
END_TEST

/* --- the key ring over many chunks: ListKeys pages, snapshot, restore ---- */

static void create(kms_keyring *kr, const char *id)
{
	uint8_t w[40];
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(w, 7, sizeof(w));
	ck_assert_int_eq(
	    kms_keyring_cmd_create_key(id, "k", NULL, ADMIN, 1700000000, w, sizeof(w), &cmd, &err),
	    KMS_OK);
	ck_assert_msg(kms_keyring_apply(kr, cmd.data, cmd.len, &err) == KMS_OK, "create %s: %s",
		      id, err.msg);
	kms_buf_free(&cmd);
}

/* Walks every page of page_size after the token "" and checks the order. */
static void list_all(kms_keyring *kr, char **want, size_t n, size_t page_size)
{
	const char *after = "";
	char last[64] = "";
	size_t seen = 0;
	int more = 1;

	while (more) {
		Kms__V1__KeyMetadata **keys = NULL;
		size_t got = 0;
		kms_err err = {0};

		ck_assert_msg(kms_keyring_list(kr, ADMIN, 1, after, page_size, &keys, &got, &more,
					       &err) == KMS_OK,
			      "list: %s", err.msg);
		for (size_t i = 0; i < got; i++) {
			ck_assert_uint_lt(seen, n);
			ck_assert_str_eq(keys[i]->key_id, want[seen]);
			seen++;
		}
		ck_assert(more ? got == page_size : got <= page_size);
		if (got > 0)
			snprintf(last, sizeof(last), "%s", keys[got - 1]->key_id);
		after = last;
		kms_keyring_list_free(keys, got);
	}
	ck_assert_uint_eq(seen, n);
}

START_TEST(test_keyring_pages_over_chunks)
{
	enum { N = 3 * KR_CHUNK_MAX + 11 };
	char **ids = calloc(N, sizeof(*ids));
	kms_keyring *kr = NULL, *back = NULL;
	kms_buf snap = {0};
	kms_err err = {0};

	ck_assert_ptr_nonnull(ids);
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	for (size_t i = 0; i < N; i++) {
		char id[32];

		snprintf(id, sizeof(id), "p-%08llx", (unsigned long long)(rnd() & 0xffffffffu));
		if (kms_keyring_has_key(kr, id)) {
			i--;
			continue;
		}
		ids[i] = strdup(id);
		ck_assert_ptr_nonnull(ids[i]);
		create(kr, id);
	}
	qsort(ids, N, sizeof(*ids), cmp_str);
	ck_assert_uint_eq(kms_keyring_count(kr), N);
	list_all(kr, ids, N, 1000);
	list_all(kr, ids, N, 7);
	list_all(kr, ids, N, 1);
	/* A page token that names no key: the keys after it. */
	{
		Kms__V1__KeyMetadata **keys = NULL;
		size_t got = 0;
		int more = 0;
		char tok[64];

		snprintf(tok, sizeof(tok), "%s~", ids[N / 2]); /* '~' sorts after hex */
		ck_assert_int_eq(
		    kms_keyring_list(kr, ADMIN, 1, tok, 3, &keys, &got, &more, &err), KMS_OK);
		ck_assert_uint_eq(got, 3);
		ck_assert_int_eq(more, 1);
		ck_assert_str_eq(keys[0]->key_id, ids[N / 2 + 1]);
		kms_keyring_list_free(keys, got);
		ck_assert_int_eq(kms_keyring_list(kr, ADMIN, 1, "zzz", 3, &keys, &got, &more, &err),
				 KMS_OK);
		ck_assert_uint_eq(got, 0);
		ck_assert_int_eq(more, 0);
		kms_keyring_list_free(keys, got);
	}
	/* A restore builds its index whole; keys made after it split chunks. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&back, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(back, snap.data, snap.len, &err) == KMS_OK, "restore: %s",
		      err.msg);
	list_all(back, ids, N, 1000);
	{
		char **more_ids = calloc(N + 2, sizeof(*more_ids));
		size_t n = N;

		ck_assert_ptr_nonnull(more_ids);
		memcpy(more_ids, ids, N * sizeof(*ids));
		create(back, "p-0");	     /* before all */
		create(back, "p-7fffffff0"); /* in the middle of a full chunk */
		more_ids[n++] = "p-0";
		more_ids[n++] = "p-7fffffff0";
		qsort(more_ids, n, sizeof(*more_ids), cmp_str);
		list_all(back, more_ids, n, 13);
		free(more_ids);
	}
	/* Bad input: a key that is there already changes nothing. */
	{
		uint8_t w[40];
		kms_buf cmd = {0};

		memset(w, 7, sizeof(w));
		ck_assert_int_eq(kms_keyring_cmd_create_key(ids[5], "k", NULL, ADMIN, 1, w,
							    sizeof(w), &cmd, &err),
				 KMS_OK);
		ck_assert_int_eq(kms_keyring_apply(back, cmd.data, cmd.len, &err), KMS_ERR_EXISTS);
		kms_buf_free(&cmd);
		ck_assert_uint_eq(kms_keyring_count(back), N + 2);
	}
	kms_buf_free(&snap);
	kms_keyring_free(back);
	kms_keyring_free(kr);
	ids_free(ids, N);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("keyring index");
	TCase *tc = tcase_create("index");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_front_middle_end);
	tcase_add_test(tc, test_append_refuses_out_of_order);
	tcase_add_test(tc, test_splits);
	tcase_add_test(tc, test_out_of_memory_changes_nothing);
	tcase_add_test(tc, test_growth_without_memory);
	tcase_add_test(tc, test_random_inserts_against_reference);
	tcase_add_test(tc, test_keyring_pages_over_chunks);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
