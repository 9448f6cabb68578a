package state

import (
	"github.com/chime-ha/chime/chime/structs"
)

// Buckets of ACL tokens.
var (
	bucketACLTokens = []byte("acl_tokens")       // accessor id → structs.ACLToken JSON
	bucketACLHashes = []byte("acl_token_hashes") // sha256 hex of a token's secret → accessor id (never served)
)

// Key of bucketMeta: the index of the ACL bootstrap (0: not bootstrapped).
var metaACLBootstrap = []byte("acl_bootstrap_index")

// ACLToken returns a token by accessor id, or nil.
func (t *Tx) ACLToken(accessor string) (*structs.ACLToken, error) {
	var tok structs.ACLToken
	ok, err := getJSON(t.tx.Bucket(bucketACLTokens), accessor, &tok)
	if err != nil || !ok {
		return nil, err
	}
	return &tok, nil
}

// ACLTokens lists every token by accessor id.
func (t *Tx) ACLTokens() ([]structs.ACLToken, error) {
	var out []structs.ACLToken
	err := forEachJSON(t.tx.Bucket(bucketACLTokens), func(tok structs.ACLToken) { out = append(out, tok) })
	return out, err
}

// ACLAccessorByHash returns the accessor id of the token whose secret
// hashes to hash ("" if none).
func (t *Tx) ACLAccessorByHash(hash string) string {
	return string(t.tx.Bucket(bucketACLHashes).Get([]byte(hash)))
}

// PutACLToken stores a token and the hash of its secret.
func (t *Tx) PutACLToken(tok *structs.ACLToken, hash string) error {
	if err := t.tx.Bucket(bucketACLHashes).Put([]byte(hash), []byte(tok.AccessorID)); err != nil {
		return err
	}
	return putJSON(t.tx.Bucket(bucketACLTokens), tok.AccessorID, tok)
}

// DeleteACLToken removes a token and its hash.
func (t *Tx) DeleteACLToken(accessor string) error {
	hashes := t.tx.Bucket(bucketACLHashes)
	var hash []byte
	if err := hashes.ForEach(func(k, v []byte) error {
		if string(v) == accessor {
			hash = append([]byte(nil), k...)
		}
		return nil
	}); err != nil {
		return err
	}
	if hash != nil {
		if err := hashes.Delete(hash); err != nil {
			return err
		}
	}
	return t.tx.Bucket(bucketACLTokens).Delete([]byte(accessor))
}

// ACLBootstrapIndex is the index at which ACLs were bootstrapped (0: never).
func (t *Tx) ACLBootstrapIndex() uint64 { return t.metaCounter(metaACLBootstrap) }

// SetACLBootstrapIndex records the bootstrap.
func (t *Tx) SetACLBootstrapIndex(idx uint64) error { return t.putMetaCounter(metaACLBootstrap, idx) }
