/* test_status_map.c - every kmsd status maps to the gRPC code the API promises. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kms/client.h"
#include "kms/error.h"
#include "api/status_map.h"
#include "check_run.h"

START_TEST(api_contract_codes)
{
	/* The codes issue #2 fixes for clients. */
	ck_assert_int_eq(kms_status_to_grpc(KMS_OK), GRPC_STATUS_OK);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_NOT_FOUND), GRPC_STATUS_NOT_FOUND);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_PERMISSION), GRPC_STATUS_PERMISSION_DENIED);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_INVALID), GRPC_STATUS_INVALID_ARGUMENT);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_AUTH_FAILED), GRPC_STATUS_INVALID_ARGUMENT);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_UNAUTHENTICATED), GRPC_STATUS_UNAUTHENTICATED);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_UNAVAILABLE), GRPC_STATUS_UNAVAILABLE);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_EXISTS), GRPC_STATUS_ALREADY_EXISTS);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_PRECONDITION), GRPC_STATUS_FAILED_PRECONDITION);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_LIMIT), GRPC_STATUS_RESOURCE_EXHAUSTED);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_DEADLINE), GRPC_STATUS_DEADLINE_EXCEEDED);
	ck_assert_int_eq(kms_status_to_grpc(KMS_ERR_UNIMPLEMENTED), GRPC_STATUS_UNIMPLEMENTED);
}
END_TEST

START_TEST(every_status_is_mapped_and_named)
{
	for (int s = 1; s < KMS_STATUS_COUNT; s++) {
		ck_assert_msg(kms_status_to_grpc(s) != GRPC_STATUS_OK, "status %d maps to OK", s);
		ck_assert_str_ne(kms_strerror(s), "unknown status");
	}
}
END_TEST

START_TEST(out_of_range_is_internal)
{
	ck_assert_int_eq(kms_status_to_grpc(-1), GRPC_STATUS_INTERNAL);
	ck_assert_int_eq(kms_status_to_grpc(KMS_STATUS_COUNT), GRPC_STATUS_INTERNAL);
	ck_assert_str_eq(kms_strerror(KMS_STATUS_COUNT), "unknown status");
	ck_assert_str_eq(kms_grpc_status_name(GRPC_STATUS_NOT_FOUND), "NOT_FOUND");
	ck_assert_str_eq(kms_grpc_status_name(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
	ck_assert_str_eq(kms_grpc_status_name(99), "UNKNOWN_STATUS");
	ck_assert_str_eq(kms_grpc_status_name(-3), "UNKNOWN_STATUS");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("status_map");
	TCase *tc = tcase_create("map");
	SRunner *sr;

	tcase_add_test(tc, api_contract_codes);
	tcase_add_test(tc, every_status_is_mapped_and_named);
	tcase_add_test(tc, out_of_range_is_internal);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
