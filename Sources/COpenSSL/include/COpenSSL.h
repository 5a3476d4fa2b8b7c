#ifndef LOUPE_COPENSSL_H
#define LOUPE_COPENSSL_H

// The legacy EC_KEY path is used on purpose for the shared leaf key: on OpenSSL 3.0 it makes
// X509_set_pubkey about 4x cheaper than a provider-native key (see shared/FACTS.md).
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

// Thin shims for what OpenSSL's headers define as macros or variadic functions.

/// BIO_get_mem_data: pointer to and length of a memory BIO's contents.
long loupe_BIO_get_mem_data(BIO *bio, char **data);

/// EVP_EC_gen / EVP_PKEY_Q_keygen (variadic): a provider-native EC key on a named curve.
EVP_PKEY *loupe_EVP_EC_gen(const char *curve);

/// EVP_RSA_gen (macro over variadic EVP_PKEY_Q_keygen).
EVP_PKEY *loupe_EVP_RSA_gen(unsigned int bits);

/// EVP_PKEY_assign_EC_KEY-equivalent: wraps a legacy EC_KEY in an EVP_PKEY (takes ownership).
EVP_PKEY *loupe_EVP_PKEY_from_EC_KEY(EC_KEY *key);

/// sk_GENERAL_NAME_* helpers (type-safe stack macros).
int loupe_sk_GENERAL_NAME_num(const GENERAL_NAMES *names);
GENERAL_NAME *loupe_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int i);
GENERAL_NAMES *loupe_sk_GENERAL_NAME_new(void);
int loupe_sk_GENERAL_NAME_push(GENERAL_NAMES *names, GENERAL_NAME *name);
void loupe_GENERAL_NAMES_free(GENERAL_NAMES *names);

/// XN_FLAG_RFC2253 (a compound macro).
unsigned long loupe_XN_FLAG_RFC2253(void);

/// SSL_CTX_set_min_proto_version / max (macros over SSL_CTX_ctrl).
int loupe_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int loupe_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
/// SSL_set_max_proto_version (a macro over SSL_ctrl): one session's ceiling.
int loupe_SSL_set_max_proto_version(SSL *ssl, int version);

/// SSL_set_min_proto_version (a macro over SSL_ctrl): one session's floor.
int loupe_SSL_set_min_proto_version(SSL *ssl, int version);

/// SSL_set_mode (a macro over SSL_ctrl): one session's modes.
long loupe_SSL_set_mode(SSL *ssl, long mode);

/// OCSP stapling (status_request; macros over SSL_ctrl / SSL_CTX_callback_ctrl).
long loupe_SSL_set_tlsext_status_type(SSL *ssl, int type);
long loupe_SSL_get_tlsext_status_ocsp_resp(SSL *ssl, const unsigned char **response);
/// Takes ownership of `response` (OPENSSL_malloc'd).
long loupe_SSL_set_tlsext_status_ocsp_resp(SSL *ssl, unsigned char *response, long length);
long loupe_SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, int (*callback)(SSL *, void *));
/// OPENSSL_malloc (a macro): a buffer OpenSSL may free.
void *loupe_OPENSSL_malloc(size_t length);

/// SSL_set1_sigalgs_list / SSL_set1_groups_list (macros over SSL_ctrl): what one client
/// session offers, as colon-separated names.
int loupe_SSL_set1_sigalgs_list(SSL *ssl, const char *list);
int loupe_SSL_set1_groups_list(SSL *ssl, const char *list);

/// sk_SSL_CIPHER_* helpers (type-safe stack macros).
int loupe_sk_SSL_CIPHER_num(const STACK_OF(SSL_CIPHER) *ciphers);
const SSL_CIPHER *loupe_sk_SSL_CIPHER_value(const STACK_OF(SSL_CIPHER) *ciphers, int i);
void loupe_sk_SSL_CIPHER_free(STACK_OF(SSL_CIPHER) *ciphers);

/// SSL_set_tlsext_host_name (macro over SSL_ctrl): the SNI a client sends.
int loupe_SSL_set_tlsext_host_name(SSL *ssl, const char *name);

/// SSL_CTX_set_mode (macro): partial writes, moving write buffers, released record buffers.
long loupe_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);

/// Keys a session-ticket HMAC (SHA-256) with `key`, through OSSL_PARAMs (for the ticket callback).
int loupe_ticket_mac_init(EVP_MAC_CTX *mac, const unsigned char *key, size_t length);

/// sk_X509_* helpers.
int loupe_sk_X509_num(const STACK_OF(X509) *certs);
X509 *loupe_sk_X509_value(const STACK_OF(X509) *certs, int i);
void loupe_sk_X509_pop_free(STACK_OF(X509) *certs);

/// The TLS Feature extension's values (RFC 7633; 5 = status_request, "must staple"): at most
/// `max` into `out`, their count; -1 without the extension (or with one that does not parse).
int loupe_X509_tls_features(X509 *x, long *out, int max);

#endif
