/* main.c - the kmsd command line: parse options, start the node, wait for a signal, stop. */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "config.h"
#include "kms/log.h"
#include "node/node.h"
#include "node/restore.h"

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kmsd --config FILE\n"
		"       kmsd --config FILE --restore BACKUP --share SHARE [--share SHARE ...]\n"
		"\n"
		"kmsd keeps master keys in a PKCS#11 HSM, replicates its key ring with Raft,\n"
		"and wraps and unwraps data keys over mutual-TLS gRPC (kms.v1.KeyManagement).\n"
		"\n"
		"Options:\n"
		"  -c, --config FILE   the node's configuration file (INI; see docs/OPERATIONS.md)\n"
		"  --restore BACKUP    start a new cluster from a backup file (kmsctl backup\n"
		"                      create): needs an empty data_dir, a fresh token and\n"
		"  --share SHARE       M custodians' unsealed shares (kmsctl backup unseal-share),\n"
		"                      one --share each (docs/OPERATIONS.md \"Backup and restore\")\n"
		"  -h, --help          show this help\n"
		"  -V, --version       show the version\n"
		"\n"
		"The HSM PIN comes from the file or environment variable named in [hsm];\n"
		"never from the command line. SIGTERM or SIGINT stops the node cleanly;\n"
		"SIGHUP reloads the certificate, CA and CRL files.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{"restore", required_argument, NULL, 'R'},
		{"share", required_argument, NULL, 'S'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL;
	kms_restore_opts restore = {0};
	kms_node *node = NULL;
	kms_err err = {0};
	sigset_t stop;
	int sig = 0, c, fatal;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("kmsd %s\n", PACKAGE_VERSION);
			return 0;
		case 'R':
			restore.file = optarg;
			break;
		case 'S':
			if (restore.n_shares == KMS_BACKUP_CUSTODIANS_MAX) {
				fprintf(stderr, "kmsd: more than %d --share\n",
					KMS_BACKUP_CUSTODIANS_MAX);
				return 1;
			}
			restore.shares[restore.n_shares++] = optarg;
			break;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (config == NULL || optind != argc || (restore.file == NULL) != (restore.n_shares == 0)) {
		usage(stderr);
		return 1;
	}
	/*
	 * No OpenSSL clean-up at exit: gRPC's executor threads may still be
	 * freeing TLS objects (with the node's HSM key, through the engine)
	 * when main returns, and OpenSSL's atexit handler frees the locks they
	 * take (a SIGSEGV in EC_KEY_free seen at exit under ASan).
	 */
	if (OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL) != 1) {
		KMS_LOG_E("kmsd cannot start: OpenSSL did not initialise");
		return 1;
	}
	/* A write to a vanished peer must be an error, not a silent exit 141. */
	signal(SIGPIPE, SIG_IGN);
	/* Block the stop signals before any thread starts, so only sigwait sees them. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP); /* not a stop: reloads the TLS files */
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	if (kms_node_start_restore(config, restore.file != NULL ? &restore : NULL, &node, &err) !=
	    KMS_OK) {
		KMS_LOG_E("kmsd cannot start: %s", err.msg);
		return 1;
	}
	while (sigwait(&stop, &sig) == 0 && sig == SIGHUP)
		kms_node_reload_tls(node, "SIGHUP");
	fatal = atomic_load(&node->fatal);
	KMS_LOG_I("signal %d: stopping", sig);
	kms_node_stop(node);
	KMS_LOG_I("stopped");
	return fatal ? 1 : 0;
}
