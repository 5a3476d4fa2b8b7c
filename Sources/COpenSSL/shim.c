#include "COpenSSL.h"

long loupe_BIO_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }

EVP_PKEY *loupe_EVP_EC_gen(const char *curve) { return EVP_EC_gen(curve); }

EVP_PKEY *loupe_EVP_RSA_gen(unsigned int bits) { return EVP_RSA_gen(bits); }

EVP_PKEY *loupe_EVP_PKEY_from_EC_KEY(EC_KEY *key) {
    EVP_PKEY *pkey = EVP_PKEY_new();
    if (pkey == NULL) return NULL;
    if (EVP_PKEY_assign_EC_KEY(pkey, key) != 1) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return pkey;
}

int loupe_sk_GENERAL_NAME_num(const GENERAL_NAMES *names) { return sk_GENERAL_NAME_num(names); }
GENERAL_NAME *loupe_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int i) {
    return sk_GENERAL_NAME_value(names, i);
}
GENERAL_NAMES *loupe_sk_GENERAL_NAME_new(void) { return sk_GENERAL_NAME_new_null(); }
int loupe_sk_GENERAL_NAME_push(GENERAL_NAMES *names, GENERAL_NAME *name) {
    return sk_GENERAL_NAME_push(names, name);
}
void loupe_GENERAL_NAMES_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }

int loupe_sk_X509_num(const STACK_OF(X509) *certs) { return sk_X509_num(certs); }
X509 *loupe_sk_X509_value(const STACK_OF(X509) *certs, int i) { return sk_X509_value(certs, i); }
void loupe_sk_X509_pop_free(STACK_OF(X509) *certs) { sk_X509_pop_free(certs, X509_free); }

int loupe_X509_tls_features(X509 *x, long *out, int max) {
    TLS_FEATURE *features = X509_get_ext_d2i(x, NID_tlsfeature, NULL, NULL);
    if (features == NULL) return -1;
    int n = sk_ASN1_INTEGER_num(features);
    if (n > max) n = max;
    for (int i = 0; i < n; i++) out[i] = ASN1_INTEGER_get(sk_ASN1_INTEGER_value(features, i));
    TLS_FEATURE_free(features);
    return n;
}

unsigned long loupe_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }

int loupe_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_min_proto_version(ctx, version); }
int loupe_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_max_proto_version(ctx, version); }
int loupe_SSL_set_max_proto_version(SSL *ssl, int version) { return (int)SSL_set_max_proto_version(ssl, version); }
int loupe_SSL_set_min_proto_version(SSL *ssl, int version) { return (int)SSL_set_min_proto_version(ssl, version); }
long loupe_SSL_set_tlsext_status_type(SSL *ssl, int type) { return SSL_set_tlsext_status_type(ssl, type); }
long loupe_SSL_get_tlsext_status_ocsp_resp(SSL *ssl, const unsigned char **response) { return SSL_get_tlsext_status_ocsp_resp(ssl, response); }
long loupe_SSL_set_tlsext_status_ocsp_resp(SSL *ssl, unsigned char *response, long length) { return SSL_set_tlsext_status_ocsp_resp(ssl, response, length); }
long loupe_SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, int (*callback)(SSL *, void *)) { return SSL_CTX_set_tlsext_status_cb(ctx, callback); }
void *loupe_OPENSSL_malloc(size_t length) { return OPENSSL_malloc(length); }
long loupe_SSL_set_mode(SSL *ssl, long mode) { return SSL_set_mode(ssl, mode); }
int loupe_SSL_set1_sigalgs_list(SSL *ssl, const char *list) { return (int)SSL_set1_sigalgs_list(ssl, list); }
int loupe_SSL_set1_groups_list(SSL *ssl, const char *list) { return (int)SSL_set1_groups_list(ssl, list); }
int loupe_sk_SSL_CIPHER_num(const STACK_OF(SSL_CIPHER) *ciphers) { return sk_SSL_CIPHER_num(ciphers); }
const SSL_CIPHER *loupe_sk_SSL_CIPHER_value(const STACK_OF(SSL_CIPHER) *ciphers, int i) { return sk_SSL_CIPHER_value(ciphers, i); }
void loupe_sk_SSL_CIPHER_free(STACK_OF(SSL_CIPHER) *ciphers) { sk_SSL_CIPHER_free(ciphers); }
int loupe_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
long loupe_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }

int loupe_ticket_mac_init(EVP_MAC_CTX *mac, const unsigned char *key, size_t length) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key, length),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    return EVP_MAC_CTX_set_params(mac, params);
}
