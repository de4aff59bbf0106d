package pgcluster

import "testing"

// A cluster made with password auth keeps initdb's comment listing the
// methods ("trust", …): reading it as a trust cluster made a second start
// try to set the password without one, and fail.
func TestTrustAuthReadsRulesNotComments(t *testing.T) {
	scram := `# METHOD can be "trust", "reject", "md5", "password", "scram-sha-256",
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
`
	if trustAuth(scram) {
		t.Fatal("a scram-sha-256 pg_hba.conf was read as trust")
	}
	old := "# comment\nlocal   all   all   trust\nhost all all 127.0.0.1/32 trust # old hookstream\n"
	if !trustAuth(old) {
		t.Fatal("a trust pg_hba.conf was not recognised")
	}
}
