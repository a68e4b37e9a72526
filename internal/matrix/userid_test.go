package matrix

import "testing"

func TestParseUserID(t *testing.T) {
	good := map[string]UserID{
		"@alice:example.org":         {"alice", "example.org"},
		"@a.b_c=d-e/f+g:ex.org:8448": {"a.b_c=d-e/f+g", "ex.org:8448"},
		"@Legacy!User:1.2.3.4":       {"Legacy!User", "1.2.3.4"},
		"@u:[::1]:8448":              {"u", "[::1]:8448"},
		"@u:[2001:db8::1]":           {"u", "[2001:db8::1]"},
		"@u:localhost":               {"u", "localhost"},
	}
	for in, want := range good {
		got, err := ParseUserID(in)
		if err != nil {
			t.Errorf("ParseUserID(%q): unexpected error %v", in, err)
			continue
		}
		if got != want || got.String() != in {
			t.Errorf("ParseUserID(%q) = %+v, want %+v", in, got, want)
		}
	}
	long := "@" + string(make([]byte, 0)) + "a"
	for len(long) < 250 {
		long += "aaaaaaaaaa"
	}
	bad := []string{
		"", "alice", "alice:example.org", "@alice", "@:example.org", "@alice:",
		"@al ice:example.org", "@alicé:example.org", "@alice:exa mple.org",
		"@alice:example.org:", "@alice:example.org:123456", "@alice:example.org:12a",
		"@alice:[::1", "@alice:[notip]", "@alice:[::1]x", "@alice:ex_ample.org",
		long + ":example.org",
	}
	for _, in := range bad {
		if _, err := ParseUserID(in); err == nil {
			t.Errorf("ParseUserID(%q): expected an error", in)
		}
	}
}
