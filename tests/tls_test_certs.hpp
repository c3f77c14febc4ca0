#pragma once
// Throwaway TLS material for tests and benches, made with OpenSSL's API (no `openssl`
// command needed): a self-signed CA, a server certificate it signs for 127.0.0.1 and
// localhost, and an unrelated second CA, written as PEM files into a fresh temporary
// directory that is removed again. EC P-256 keys, valid for a day.

#ifdef PSYNC_HAVE_TLS

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

namespace psync_test {

struct TlsFiles {
  std::filesystem::path dir;
  std::filesystem::path ca;            // the CA that signed the server's certificate
  std::filesystem::path server_cert;   // for 127.0.0.1 and localhost
  std::filesystem::path server_key;
  std::filesystem::path other_ca;      // a CA that signed nothing of ours
  std::filesystem::path other_cert;    // a server certificate the other CA signed, for 127.0.0.1
  std::filesystem::path other_key;
  std::filesystem::path wrong_name_cert;  // signed by `ca`, but for "elsewhere.example" only
  std::filesystem::path wrong_name_key;

  TlsFiles() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "psync-tls-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    ca = dir / "ca.pem";
    server_cert = dir / "server.pem";
    server_key = dir / "server.key";
    other_ca = dir / "other-ca.pem";
    other_cert = dir / "other-server.pem";
    other_key = dir / "other-server.key";
    wrong_name_cert = dir / "wrong-name.pem";
    wrong_name_key = dir / "wrong-name.key";

    auto ca_key = key();
    auto ca_x = cert(ca_key.get(), nullptr, nullptr, "psync test CA", "");
    auto s_key = key();
    auto s_x = cert(s_key.get(), ca_x.get(), ca_key.get(), "psync test server", "IP:127.0.0.1,DNS:localhost");
    auto o_key = key();
    auto o_x = cert(o_key.get(), nullptr, nullptr, "another CA", "");
    auto os_key = key();
    auto os_x = cert(os_key.get(), o_x.get(), o_key.get(), "another server", "IP:127.0.0.1,DNS:localhost");
    auto w_key = key();
    auto w_x = cert(w_key.get(), ca_x.get(), ca_key.get(), "elsewhere", "DNS:elsewhere.example");
    write_cert(ca, ca_x.get());
    write_cert(server_cert, s_x.get());
    write_key(server_key, s_key.get());
    write_cert(other_ca, o_x.get());
    write_cert(other_cert, os_x.get());
    write_key(other_key, os_key.get());
    write_cert(wrong_name_cert, w_x.get());
    write_key(wrong_name_key, w_key.get());
  }
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;
  ~TlsFiles() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

 private:
  struct FreeKey {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
  };
  struct FreeCert {
    void operator()(X509* x) const { X509_free(x); }
  };
  using Key = std::unique_ptr<EVP_PKEY, FreeKey>;
  using Cert = std::unique_ptr<X509, FreeCert>;

  static void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("test certificates: ") + what + " failed");
  }

  static Key key() {
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr),
                                                                    &EVP_PKEY_CTX_free);
    check(ctx != nullptr, "EVP_PKEY_CTX_new_id");
    check(EVP_PKEY_keygen_init(ctx.get()) == 1, "EVP_PKEY_keygen_init");
    check(EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) == 1, "set curve");
    EVP_PKEY* k = nullptr;
    check(EVP_PKEY_keygen(ctx.get(), &k) == 1, "EVP_PKEY_keygen");
    return Key(k);
  }

  static void extension(X509* x, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, nullptr, nullptr, 0);
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
    check(e != nullptr, "X509V3_EXT_conf_nid");
    check(X509_add_ext(x, e, -1) == 1, "X509_add_ext");
    X509_EXTENSION_free(e);
  }

  // A certificate for `k`, signed by `issuer_key` (self-signed when it is null); a CA
  // when `san` is empty, else a server certificate with those subjectAltNames.
  static Cert cert(EVP_PKEY* k, X509* issuer, EVP_PKEY* issuer_key, const std::string& cn, const std::string& san) {
    static long serial = 1;
    Cert x(X509_new());
    check(x != nullptr, "X509_new");
    check(X509_set_version(x.get(), 2) == 1, "X509_set_version");
    ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x.get()), 24 * 3600);
    check(X509_set_pubkey(x.get(), k) == 1, "X509_set_pubkey");
    X509_NAME* name = X509_get_subject_name(x.get());
    check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()),
                                     -1, -1, 0) == 1,
          "X509_NAME_add_entry_by_txt");
    check(X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name) == 1, "X509_set_issuer_name");
    if (san.empty()) {
      extension(x.get(), issuer, NID_basic_constraints, "critical,CA:TRUE");
      extension(x.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
      extension(x.get(), issuer, NID_basic_constraints, "critical,CA:FALSE");
      extension(x.get(), issuer, NID_key_usage, "critical,digitalSignature");
      extension(x.get(), issuer, NID_ext_key_usage, "serverAuth");
      extension(x.get(), issuer, NID_subject_alt_name, san);
    }
    check(X509_sign(x.get(), issuer_key ? issuer_key : k, EVP_sha256()) > 0, "X509_sign");
    return x;
  }

  static void write_cert(const std::filesystem::path& p, X509* x) {
    std::FILE* f = std::fopen(p.c_str(), "w");
    check(f != nullptr, "fopen");
    const bool ok = PEM_write_X509(f, x) == 1;
    std::fclose(f);
    check(ok, "PEM_write_X509");
  }

  static void write_key(const std::filesystem::path& p, EVP_PKEY* k) {
    std::FILE* f = std::fopen(p.c_str(), "w");
    check(f != nullptr, "fopen");
    const bool ok = PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    std::fclose(f);
    check(ok, "PEM_write_PrivateKey");
  }
};

}  // namespace psync_test

#endif  // PSYNC_HAVE_TLS
