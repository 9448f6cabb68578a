package tlsconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// WritePair writes a certificate (mode 0644) and its key (mode 0600). It
// refuses to replace either file unless force is set, and checks both
// before it writes anything.
func WritePair(certPath, keyPath string, certPEM, keyPEM []byte, force bool) error {
	if certPath == keyPath {
		return fmt.Errorf("the certificate and the key would both be written to %s", certPath)
	}
	if !force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s already exists (pass --force to overwrite it)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	if err := writeFile(keyPath, keyPEM, 0o600, force); err != nil {
		return err
	}
	return writeFile(certPath, certPEM, 0o644, force)
}

// writeFile writes data to path with mode, creating it exclusively unless
// force. A replaced key gets mode 0600 too, whatever the old file had.
func writeFile(path string, data []byte, mode os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists (pass --force to overwrite it)", path)
		}
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// IssueFiles issues a certificate of o and writes it and its key to
// certPath and keyPath (WritePair).
func (ca *CA) IssueFiles(o CertOptions, certPath, keyPath string, force bool) error {
	certPEM, keyPEM, err := ca.Issue(o)
	if err != nil {
		return err
	}
	return WritePair(certPath, keyPath, certPEM, keyPEM, force)
}

// LoadCAFiles reads a CA certificate and its key from files (LoadCA).
func LoadCAFiles(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-key-file: %w", err)
	}
	return LoadCA(certPEM, keyPEM)
}
