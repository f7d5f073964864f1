/* check_run.h - runs a Check suite runner and turns its verdict into main()'s exit status. */
#ifndef KMS_TESTS_CHECK_RUN_H
#define KMS_TESTS_CHECK_RUN_H

#include <check.h>
#include <stdlib.h>

/* Runs every test of sr, frees it, and returns EXIT_SUCCESS only when none
 * failed; every test program's main() ends with it. */
static inline int kms_check_run(SRunner *sr)
{
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
