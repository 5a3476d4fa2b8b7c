import COpenSSL

/// Cryptographic primitives the store and CA need, all from OpenSSL.
public enum Crypto {
    /// `count` bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) throws(OpenSSLError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        ERR_clear_error()
        try check("RAND_bytes", RAND_bytes(&out, Int32(count)) == 1)
        return out
    }

    public static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        _ = bytes.withUnsafeBufferPointer { SHA256($0.baseAddress, $0.count, &out) }
        return out
    }

    public static func sha256Hex(_ bytes: [UInt8]) -> String { hex(sha256(bytes)) }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// AES-256-GCM with a random 96-bit nonce. Sealed layout: nonce (12) ‖ ciphertext ‖ tag (16).
public enum AESGCM {
    public static let keySize = 32
    static let nonceSize = 12
    static let tagSize = 16

    public struct AuthenticationFailure: Error, CustomStringConvertible {
        public var description: String { "AES-GCM authentication failed (wrong key, or the data was altered)" }
    }

    public static func seal(_ plaintext: [UInt8], key: [UInt8], aad: [UInt8]) throws(OpenSSLError) -> [UInt8] {
        precondition(key.count == keySize, "AES-256-GCM needs a 32-byte key")
        let nonce = try Crypto.randomBytes(nonceSize)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw OpenSSLError.drain("EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        ERR_clear_error()
        try check("EVP_EncryptInit_ex", EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key, nonce) == 1)
        var length: Int32 = 0
        if !aad.isEmpty {
            try check("GCM AAD", EVP_EncryptUpdate(ctx, nil, &length, aad, Int32(aad.count)) == 1)
        }
        var out = nonce + [UInt8](repeating: 0, count: plaintext.count + tagSize)
        let written: Int32 = try out.withUnsafeMutableBufferPointer { (buffer) throws(OpenSSLError) -> Int32 in
            let body = buffer.baseAddress! + nonceSize
            var total: Int32 = 0
            if !plaintext.isEmpty {
                try check("EVP_EncryptUpdate", EVP_EncryptUpdate(ctx, body, &length, plaintext, Int32(plaintext.count)) == 1)
                total = length
            }
            try check("EVP_EncryptFinal_ex", EVP_EncryptFinal_ex(ctx, body + Int(total), &length) == 1)
            total += length
            try check("GCM tag", EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(tagSize), body + Int(total)) == 1)
            return total
        }
        precondition(Int(written) == plaintext.count)
        return out
    }

    public static func open(_ sealed: [UInt8], key: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        precondition(key.count == keySize, "AES-256-GCM needs a 32-byte key")
        guard sealed.count >= nonceSize + tagSize else { throw AuthenticationFailure() }
        let nonce = Array(sealed[0..<nonceSize])
        var tag = Array(sealed[(sealed.count - tagSize)...])
        let ciphertext = Array(sealed[nonceSize..<(sealed.count - tagSize)])
        guard let ctx = EVP_CIPHER_CTX_new() else { throw OpenSSLError.drain("EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        ERR_clear_error()
        try check("EVP_DecryptInit_ex", EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key, nonce) == 1)
        var length: Int32 = 0
        if !aad.isEmpty {
            try check("GCM AAD", EVP_DecryptUpdate(ctx, nil, &length, aad, Int32(aad.count)) == 1)
        }
        var plaintext = [UInt8](repeating: 0, count: ciphertext.count + tagSize)
        var total: Int32 = 0
        if !ciphertext.isEmpty {
            try check("EVP_DecryptUpdate", EVP_DecryptUpdate(ctx, &plaintext, &length, ciphertext, Int32(ciphertext.count)) == 1)
            total = length
        }
        try check("GCM tag", EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(tagSize), &tag) == 1)
        let ok = plaintext.withUnsafeMutableBufferPointer { EVP_DecryptFinal_ex(ctx, $0.baseAddress! + Int(total), &length) }
        ERR_clear_error()
        guard ok == 1 else { throw AuthenticationFailure() }
        return Array(plaintext.prefix(Int(total + length)))
    }
}
