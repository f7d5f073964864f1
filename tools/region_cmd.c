/* region_cmd.c - 'kmsctl region': a link to another region proposed through the quorum, and the region's replication status. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/support/log.h>
#include <jansson.h>

#include "kms/alloc.h"
#include "kms/client.h"
#include "kms/quorum.h"
#include "kms/region.h"
#include "kms/v1/cluster.pb-c.h"
#include "kmsctl.h"
#include "region_cmd.h"

const char kmsctl_region_usage[] =
    "usage: kmsctl [global options] region status\n"
    "       kmsctl [global options] region promote --peer NAME [--ttl S]\n"
    "       kmsctl [global options] region unlink --peer NAME [--ttl S]\n"
    "       kmsctl [global options] region link --peer NAME --role primary|secondary\n"
    "                  --peer-endpoints HOST:PORT[,HOST:PORT...] --peer-trust-domain TD\n"
    "                  --peer-node-ca FILE [--mode async|sync] [--ttl S]\n"
    "  status: this region's name and, per link, the peer, this region's role,\n"
    "    the mode and epoch and, for a secondary, how far it is behind its\n"
    "    primary: lag_entries (changes of multi-region keys not applied here\n"
    "    yet) and lag_seconds (how long since it last held all of them), the\n"
    "    last pull and its error, and conflicts (replicated keys whose id a\n"
    "    key of this region holds). Exits 0. For administrators.\n"
    "  link: proposes a link-region root operation (an administrator's\n"
    "    certificate) and prints its proposal_id and digest; M operators\n"
    "    approve it with 'kmsctl quorum approve ID'. Each region approves its\n"
    "    own half: the primary's names the secondary with --role primary,\n"
    "    the secondary's names the primary with --role secondary. The peer's\n"
    "    nodes are named by --peer-endpoints (gRPC), their SPIFFE trust\n"
    "    domain and their node CA (PEM file): only that CA may name them.\n"
    "    --mode async (default): a write to a multi-region key is\n"
    "    acknowledged at the primary's commit.\n"
    "  promote: proposes promote-region (M operators approve it): this region,\n"
    "    a secondary of NAME, becomes the primary of NAME's multi-region keys\n"
    "    and raises the link's epoch; NAME, when it learns that epoch, turns\n"
    "    itself into this region's secondary and refuses their writes.\n"
    "    Prints proposal_id and digest.\n"
    "  unlink: proposes unlink-region (M operators approve it): the link to\n"
    "    NAME is removed and its nodes are refused from then on; keys homed\n"
    "    in NAME stay here, read-only, until a new link and a promotion.\n"
    "    Prints proposal_id and digest.\n";

enum { O_PEER = 1, O_ROLE, O_MODE, O_ENDPOINTS, O_TD, O_CA, O_TTL, O_HELP };

struct args {
	const char *sub, *peer, *role, *mode, *endpoints, *td, *ca;
	uint32_t ttl;
};

static int usage(const char *what)
{
	errmsg("region: %s", what);
	fputs("\nrun 'kmsctl region --help' for usage\n", stderr);
	return EXIT_LOCAL;
}

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
	    {"peer", required_argument, NULL, O_PEER},
	    {"role", required_argument, NULL, O_ROLE},
	    {"mode", required_argument, NULL, O_MODE},
	    {"peer-endpoints", required_argument, NULL, O_ENDPOINTS},
	    {"peer-trust-domain", required_argument, NULL, O_TD},
	    {"peer-node-ca", required_argument, NULL, O_CA},
	    {"ttl", required_argument, NULL, O_TTL},
	    {"help", no_argument, NULL, O_HELP},
	    {NULL, 0, NULL, 0},
	};
	char *end;
	unsigned long v;
	int c;

	/* 0, not 1: glibc starts its scan state over (kmsctl's own getopt ran first). */
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case O_PEER:
			a->peer = optarg;
			break;
		case O_ROLE:
			a->role = optarg;
			break;
		case O_MODE:
			a->mode = optarg;
			break;
		case O_ENDPOINTS:
			a->endpoints = optarg;
			break;
		case O_TD:
			a->td = optarg;
			break;
		case O_CA:
			a->ca = optarg;
			break;
		case O_TTL:
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-' || v < 1 ||
			    v > KMS_PROPOSAL_TTL_MAX)
				return usage("--ttl must be 1..86400 seconds");
			a->ttl = (uint32_t)v;
			break;
		case O_HELP:
			fputs(kmsctl_region_usage, stdout);
			return -1;
		default:
			return usage("unknown option");
		}
	}
	if (optind >= argc)
		return usage("no subcommand (status, link, promote or unlink)");
	a->sub = argv[optind++];
	if (optind < argc)
		return usage("unexpected argument");
	if (strcmp(a->sub, "status") == 0) {
		if (a->peer != NULL || a->role != NULL || a->mode != NULL || a->endpoints != NULL ||
		    a->td != NULL || a->ca != NULL || a->ttl != 0)
			return usage("status takes no options but the global ones");
		return EXIT_OK;
	}
	if (strcmp(a->sub, "promote") == 0 || strcmp(a->sub, "unlink") == 0) {
		if (a->peer == NULL || a->role != NULL || a->mode != NULL || a->endpoints != NULL ||
		    a->td != NULL || a->ca != NULL)
			return usage("promote and unlink take --peer NAME and --ttl S only");
		return EXIT_OK;
	}
	if (strcmp(a->sub, "link") != 0)
		return usage("unknown subcommand (status, link, promote or unlink)");
	if (a->peer == NULL || a->role == NULL || a->endpoints == NULL || a->td == NULL ||
	    a->ca == NULL)
		return usage("link needs --peer NAME --role primary|secondary --peer-endpoints "
			     "HOST:PORT[,...] --peer-trust-domain TD --peer-node-ca FILE");
	return EXIT_OK;
}

/* The whole of a small file (a CA's PEM). */
static int read_small(const char *path, kms_buf *out)
{
	FILE *f = fopen(path, "rbe");
	uint8_t *buf;
	size_t n;

	if (f == NULL) {
		errmsg("region: cannot open %s: %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	buf = kms_malloc(KMS_REGION_CA_PEM_MAX + 1);
	n = buf != NULL ? fread(buf, 1, KMS_REGION_CA_PEM_MAX + 1, f) : 0;
	fclose(f);
	if (buf == NULL || n == 0 || n > KMS_REGION_CA_PEM_MAX) {
		errmsg("region: %s is empty, unreadable or over %d bytes", path,
		       KMS_REGION_CA_PEM_MAX);
		kms_free(buf);
		return EXIT_LOCAL;
	}
	out->data = buf;
	out->len = n;
	return EXIT_OK;
}

/* Prints a proposal's id and digest, as 'kmsctl quorum propose' does. */
static int propose_and_print(kms_client *c, const Kms__V1__RootOperation *op, uint32_t ttl,
			     int json)
{
	Kms__V1__Proposal *p = NULL;
	int rc = kmsctl_propose(c, op, ttl, &p);

	if (rc != EXIT_OK)
		return rc;
	if (json)
		printf("{\"proposal_id\": \"%s\", \"digest\": \"%s\"}\n", p->id, p->digest);
	else
		printf("proposal_id: %s\ndigest: %s\n", p->id, p->digest);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	return EXIT_OK;
}

static int link_region(const struct args *a, kms_client *c, int json)
{
	Kms__V1__LinkRegionOperation lr = KMS__V1__LINK_REGION_OPERATION__INIT;
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	char *list = kms_strdup(a->endpoints), *save = NULL, *item;
	char *eps[KMS_REGION_ENDPOINTS_MAX + 1];
	kms_buf ca = {0};
	kms_err err = {0};
	size_t n = 0;
	int rc;

	if (list == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	for (item = strtok_r(list, ",", &save); item != NULL && n <= KMS_REGION_ENDPOINTS_MAX;
	     item = strtok_r(NULL, ",", &save))
		eps[n++] = item;
	lr.peer_region = (char *)a->peer;
	if (strcmp(a->role, "primary") == 0)
		lr.role = KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY;
	else if (strcmp(a->role, "secondary") == 0)
		lr.role = KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY;
	if (a->mode == NULL || strcmp(a->mode, "async") == 0)
		lr.mode = KMS__V1__REGION_MODE__REGION_MODE_ASYNC;
	else if (strcmp(a->mode, "sync") == 0)
		lr.mode = KMS__V1__REGION_MODE__REGION_MODE_SYNC;
	else
		lr.mode = (Kms__V1__RegionMode)-1;
	lr.peer_endpoints = eps;
	lr.n_peer_endpoints = n;
	lr.peer_trust_domain = (char *)a->td;
	if ((rc = read_small(a->ca, &ca)) != EXIT_OK)
		goto out;
	lr.peer_node_ca_pem.data = ca.data;
	lr.peer_node_ca_pem.len = ca.len;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_LINK_REGION;
	op.link_region = &lr;
	if (kms_root_operation_check(&op, &err) != KMS_OK) {
		rc = usage(err.msg);
		goto out;
	}
	rc = propose_and_print(c, &op, a->ttl, json);
out:
	kms_buf_free(&ca);
	kms_free(list);
	return rc;
}

/* promote-region or unlink-region of --peer. */
static int peer_operation(const struct args *a, kms_client *c, int json)
{
	Kms__V1__PromoteRegionOperation pr = KMS__V1__PROMOTE_REGION_OPERATION__INIT;
	Kms__V1__UnlinkRegionOperation ur = KMS__V1__UNLINK_REGION_OPERATION__INIT;
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	kms_err err = {0};

	if (strcmp(a->sub, "promote") == 0) {
		pr.peer_region = (char *)a->peer;
		op.op_case = KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION;
		op.promote_region = &pr;
	} else {
		ur.peer_region = (char *)a->peer;
		op.op_case = KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION;
		op.unlink_region = &ur;
	}
	if (kms_root_operation_check(&op, &err) != KMS_OK)
		return usage(err.msg);
	return propose_and_print(c, &op, a->ttl, json);
}

static json_t *link_json(const Kms__V1__RegionLinkStatus *l)
{
	json_t *o = json_object(), *eps = json_array();
	int bad = o == NULL || eps == NULL;

	for (size_t i = 0; !bad && i < l->n_peer_endpoints; i++)
		bad |= json_array_append_new(eps, json_string(l->peer_endpoints[i]));
	bad |= o == NULL || json_object_set_new(o, "peer_region", json_string(l->peer_region)) ||
	       json_object_set_new(o, "role", json_string(l->role)) ||
	       json_object_set_new(o, "mode", json_string(l->mode)) ||
	       json_object_set_new(o, "epoch", json_integer((json_int_t)l->epoch)) ||
	       json_object_set_new(o, "peer_endpoints", eps) ||
	       json_object_set_new(o, "cursor", json_integer((json_int_t)l->cursor)) ||
	       json_object_set_new(o, "peer_head", json_integer((json_int_t)l->peer_head)) ||
	       json_object_set_new(o, "lag_entries", json_integer((json_int_t)l->lag_entries)) ||
	       json_object_set_new(o, "lag_seconds", json_integer(l->lag_seconds)) ||
	       json_object_set_new(o, "last_error", json_string(l->last_error)) ||
	       json_object_set_new(o, "last_pull_unix", json_integer(l->last_pull_unix)) ||
	       json_object_set_new(o, "conflicts", json_integer((json_int_t)l->conflicts)) ||
	       json_object_set_new(o, "last_conflict", json_string(l->last_conflict)) ||
	       json_object_set_new(o, "peer_cursor", json_integer((json_int_t)l->peer_cursor)) ||
	       json_object_set_new(o, "awaiting_follow", json_boolean(l->awaiting_follow));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int print_json(const Kms__V1__RegionStatusResponse *r)
{
	json_t *o = json_object(), *links = json_array();
	int bad = o == NULL || links == NULL;

	for (size_t i = 0; !bad && i < r->n_links; i++) {
		json_t *l = link_json(r->links[i]);

		bad |= l == NULL || json_array_append_new(links, l);
	}
	bad |= o == NULL || json_object_set_new(o, "region", json_string(r->region)) ||
	       json_object_set_new(o, "region_rev", json_integer((json_int_t)r->region_rev)) ||
	       json_object_set_new(o, "links", links);
	/* As kmsctl's other commands print (it sets jansson's allocator). */
	bad = bad || json_dumpf(o, stdout, JSON_COMPACT) != 0 || putchar('\n') == EOF;
	json_decref(o);
	if (bad) {
		errmsg("region: cannot write the status");
		return EXIT_LOCAL;
	}
	return EXIT_OK;
}

static void print_text(const Kms__V1__RegionStatusResponse *r)
{
	printf("region: %s\nregion_rev: %" PRIu64 "\n", r->region, r->region_rev);
	for (size_t i = 0; i < r->n_links; i++) {
		const Kms__V1__RegionLinkStatus *l = r->links[i];

		printf("link: %s role %s mode %s epoch %" PRIu64 "\n", l->peer_region, l->role,
		       l->mode, l->epoch);
		if (strcmp(l->role, "secondary") == 0)
			printf("  cursor %" PRIu64 " of %" PRIu64 ", lag %" PRIu64
			       " entries, %" PRId64 " s; conflicts %" PRIu64 "%s%s\n",
			       l->cursor, l->peer_head, l->lag_entries, l->lag_seconds, l->conflicts,
			       l->last_conflict[0] != '\0' ? ", last " : "", l->last_conflict);
		else
			printf("  secondary asked after %" PRIu64 "%s\n", l->peer_cursor,
			       l->awaiting_follow ? "; promoted over it, not following yet (sync "
						    "writes do not wait for it)"
						  : "");
		if (l->last_error[0] != '\0')
			printf("  last error: %s\n", l->last_error);
	}
}

static int status(kms_client *c, int json)
{
	Kms__V1__RegionStatusRequest req = KMS__V1__REGION_STATUS_REQUEST__INIT;
	Kms__V1__RegionStatusResponse *resp = NULL;
	kms_rpc_status st;
	int rc = EXIT_OK;

	if (kms_client_call(c, "/kms.v1.Operator/RegionStatus", &req.base,
			    &kms__v1__region_status_response__descriptor,
			    (ProtobufCMessage **)&resp, &st) != 0)
		return kmsctl_server_error(&st);
	if (json)
		rc = print_json(resp);
	else
		print_text(resp);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

int kmsctl_region(int argc, char **argv, const kms_client_opts *copts, int json)
{
	struct args a;
	kms_client *c = NULL;
	kms_err err = {0};
	int rc;

	memset(&a, 0, sizeof(a));
	rc = parse(argc, argv, &a);
	if (rc != EXIT_OK)
		return rc < 0 ? EXIT_OK : rc;
	if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
		gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
	if (kms_client_open(copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	if (strcmp(a.sub, "status") == 0)
		rc = status(c, json);
	else if (strcmp(a.sub, "promote") == 0 || strcmp(a.sub, "unlink") == 0)
		rc = peer_operation(&a, c, json);
	else
		rc = link_region(&a, c, json);
	kms_client_close(c);
	return rc;
}
