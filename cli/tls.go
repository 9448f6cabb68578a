package cli

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/tlsconf"
)

// tlsCommand is `chime tls`: make the cluster CA and the certificates of
// servers, agents and operators (Nomad's `nomad tls` model).
func tlsCommand() *cli.Command {
	return &cli.Command{
		Name:  "tls",
		Usage: "create the cluster CA and the certificates of servers, agents and CLIs",
		Description: `Every chime listener (servers' API and Raft, agents' API) can require mutual TLS
(--tls-ca-file, --tls-cert-file, --tls-key-file). One CA signs every certificate; a
certificate carries its holder's role as a DNS name, <role>.<cluster>.chime, which peers
check: a Raft peer must hold a server certificate, an adoption announcement must come from an
agent certificate. See docs/security.md.

  chime tls ca create
  chime tls cert create --server --name s1 --additional-ipaddress 10.0.0.1
  chime tls cert create --agent --name hv1
  chime tls cert create --cli`,
		Subcommands: []*cli.Command{
			{
				Name:  "ca",
				Usage: "manage the cluster CA",
				Subcommands: []*cli.Command{{
					Name:  "create",
					Usage: "create a new CA key and certificate",
					Description: `Writes <out>/<name>.pem (the CA certificate, give it to every server, agent and
CLI as --tls-ca-file) and <out>/<name>-key.pem (the CA key, mode 0600: keep it offline; it
signs every certificate of the cluster).`,
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "cluster", Value: tlsconf.DefaultCluster, Usage: "cluster name (DNS label), written into the CA's name"},
						&cli.IntFlag{Name: "days", Value: int(tlsconf.DefaultCAValidity / (24 * time.Hour)), Usage: "validity in days"},
						&cli.StringFlag{Name: "out", Value: ".", Usage: "directory to write the files to"},
						&cli.StringFlag{Name: "name", Value: "chime-ca", Usage: "file name without .pem: writes NAME.pem and NAME-key.pem"},
						&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
					},
					Action: tlsCACreate,
				}},
			},
			{
				Name:  "cert",
				Usage: "manage certificates",
				Subcommands: []*cli.Command{{
					Name:  "create",
					Usage: "create a certificate of role server, agent or cli signed by the CA",
					Description: `Writes <out>/<name>.pem and <out>/<name>-key.pem (mode 0600). The certificate carries
the DNS name <role>.<cluster>.chime that peers verify; server and agent certificates also
carry localhost and 127.0.0.1, and serve as well as dial; cli certificates only dial.`,
					Flags: []cli.Flag{
						&cli.BoolFlag{Name: "server", Usage: "a server certificate (server.<cluster>.chime)"},
						&cli.BoolFlag{Name: "agent", Usage: "an agent certificate (agent.<cluster>.chime)"},
						&cli.BoolFlag{Name: "cli", Usage: "an operator's certificate (cli.<cluster>.chime)"},
						&cli.StringFlag{Name: "ca-file", Value: "chime-ca.pem", Usage: "the CA certificate"},
						&cli.StringFlag{Name: "ca-key-file", Value: "chime-ca-key.pem", Usage: "the CA key"},
						&cli.StringFlag{Name: "cluster", Value: tlsconf.DefaultCluster, Usage: "cluster name (DNS label) in the role name"},
						&cli.IntFlag{Name: "days", Value: int(tlsconf.DefaultCertValidity / (24 * time.Hour)), Usage: "validity in days (never beyond the CA's)"},
						&cli.StringSliceFlag{Name: "additional-dnsname", Usage: "extra DNS name (repeatable)"},
						&cli.StringSliceFlag{Name: "additional-ipaddress", Usage: "extra IP address (repeatable)"},
						&cli.StringFlag{Name: "out", Value: ".", Usage: "directory to write the files to"},
						&cli.StringFlag{Name: "name", Usage: "file name without .pem (default <cluster>-<role>), and the certificate's common name: the holder's identity the servers bind an agent's node to"},
						&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
					},
					Action: tlsCertCreate,
				}},
			},
		},
	}
}

func tlsCACreate(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only)", c.Args().First())
	}
	days := c.Int("days")
	if days < 1 {
		return fmt.Errorf("--days: must be at least 1, got %d", days)
	}
	name, err := fileBase("--name", c.String("name"))
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := tlsconf.CreateCA(tlsconf.CAOptions{Cluster: c.String("cluster"), Validity: time.Duration(days) * 24 * time.Hour})
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(c.String("out"), name+".pem"), filepath.Join(c.String("out"), name+"-key.pem")
	if err := tlsconf.WritePair(certPath, keyPath, certPEM, keyPEM, c.Bool("force")); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	fmt.Fprintf(stdout, "==> CA certificate %s\n==> CA key %s (keep it secret)\n", certPath, keyPath)
	return nil
}

func tlsCertCreate(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only)", c.Args().First())
	}
	var roles []tlsconf.Role
	for _, r := range tlsconf.Roles {
		if c.Bool(string(r)) {
			roles = append(roles, r)
		}
	}
	if len(roles) != 1 {
		return errors.New("--server, --agent, --cli: pass exactly one of them")
	}
	role := roles[0]
	days := c.Int("days")
	if days < 1 {
		return fmt.Errorf("--days: must be at least 1, got %d", days)
	}
	cluster := c.String("cluster")
	if err := tlsconf.ValidateCluster("--cluster", cluster); err != nil {
		return err
	}
	var ips []net.IP
	for _, s := range splitList(c.StringSlice("additional-ipaddress")) {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--additional-ipaddress: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	name, cn := c.String("name"), c.String("name")
	if name == "" {
		name = cluster + "-" + string(role)
	}
	name, err := fileBase("--name", name)
	if err != nil {
		return err
	}
	ca, err := tlsconf.LoadCAFiles(c.String("ca-file"), c.String("ca-key-file"))
	if err != nil {
		return err
	}
	o := tlsconf.CertOptions{Role: role, Cluster: cluster, Validity: time.Duration(days) * 24 * time.Hour,
		DNSNames: splitList(c.StringSlice("additional-dnsname")), IPs: ips, CommonName: cn}
	certPath, keyPath := filepath.Join(c.String("out"), name+".pem"), filepath.Join(c.String("out"), name+"-key.pem")
	if err := ca.IssueFiles(o, certPath, keyPath, c.Bool("force")); err != nil {
		if strings.Contains(err.Error(), "--") {
			return err
		}
		return fmt.Errorf("--out: %w", err)
	}
	fmt.Fprintf(stdout, "==> %s certificate %s (%s)\n==> key %s\n", role, certPath, tlsconf.RoleName(role, cluster), keyPath)
	return nil
}

// fileBase checks a --name: a file name, no directory.
func fileBase(flag, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("%s: %q must be a file name without a directory (use --out for that)", flag, name)
	}
	return strings.TrimSuffix(name, ".pem"), nil
}

// tlsFlags are --tls-ca-file, --tls-cert-file and --tls-key-file, the same
// on every command that listens or dials.
func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-ca-file", Usage: "the cluster CA certificate (PEM); with the two below: mutual TLS", EnvVars: []string{"CHIME_TLS_CA_FILE"}},
		&cli.StringFlag{Name: "tls-cert-file", Usage: "this process's certificate (PEM, from 'chime tls cert create')", EnvVars: []string{"CHIME_TLS_CERT_FILE"}},
		&cli.StringFlag{Name: "tls-key-file", Usage: "the certificate's private key (PEM)", EnvVars: []string{"CHIME_TLS_KEY_FILE"}},
	}
}

func tlsFiles(c *cli.Context) tlsconf.Files {
	return tlsconf.Files{CAFile: c.String("tls-ca-file"), CertFile: c.String("tls-cert-file"), KeyFile: c.String("tls-key-file")}
}

// clientTLS makes cl speak mutual TLS to the servers when the --tls-*
// files are given. Material that does not load makes every request fail
// with the error naming the flag, before anything is sent.
func clientTLS(c *cli.Context, cl *api.Client) {
	f := tlsFiles(c)
	if !f.Enabled() {
		return
	}
	m, err := tlsconf.Load(f)
	if err != nil {
		cl.HTTP, cl.Retries = &http.Client{Transport: failingTransport{err}}, 0
		return
	}
	cl.UseTLS(m.ClientConfig(tlsconf.RoleServer))
}

// failingTransport answers every request with err.
type failingTransport struct{ err error }

func (t failingTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, t.err }
