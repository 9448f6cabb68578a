package state

// bucketMeta holds the counters of the state file.
var bucketMeta = []byte("meta")

// Keys of bucketMeta, each a big-endian uint64.
var (
	metaIndex        = []byte("index")         // last applied Raft index
	metaEventSeq     = []byte("event_seq")     // sequence number of the newest event
	metaRequestCount = []byte("request_count") // request records kept (for O(1) pruning)
)

// AppliedIndex is the Raft index of the last command applied to this state.
func (t *Tx) AppliedIndex() uint64 { return getU64(t.tx.Bucket(bucketMeta).Get(metaIndex)) }

// PutAppliedIndex records that the command at the transaction's index is
// applied. Every command that reaches the state calls it, refused or not.
func (t *Tx) PutAppliedIndex() error {
	return t.tx.Bucket(bucketMeta).Put(metaIndex, u64(t.index))
}

func (t *Tx) metaCounter(key []byte) uint64 { return getU64(t.tx.Bucket(bucketMeta).Get(key)) }

func (t *Tx) putMetaCounter(key []byte, v uint64) error {
	return t.tx.Bucket(bucketMeta).Put(key, u64(v))
}
