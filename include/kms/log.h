/* log.h - process-wide leveled logging to stderr. Never pass key material, PINs or plaintext. */
#ifndef KMS_LOG_H
#define KMS_LOG_H

enum kms_log_level { KMS_LOG_ERROR = 0, KMS_LOG_WARN, KMS_LOG_INFO, KMS_LOG_DEBUG };

/* "error", "warn", "info", "debug"; returns -1 for anything else. */
int kms_log_level_parse(const char *name);
void kms_log_set_level(enum kms_log_level level);
void kms_log(enum kms_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define KMS_LOG_E(...) kms_log(KMS_LOG_ERROR, __VA_ARGS__)
#define KMS_LOG_W(...) kms_log(KMS_LOG_WARN, __VA_ARGS__)
#define KMS_LOG_I(...) kms_log(KMS_LOG_INFO, __VA_ARGS__)
#define KMS_LOG_D(...) kms_log(KMS_LOG_DEBUG, __VA_ARGS__)

#endif
