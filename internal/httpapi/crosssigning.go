package httpapi

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// uiaBody is the spec's 401 answer of an endpoint behind user-interactive
// auth. todeviced holds no passwords and completes no stage: the only way
// on is the homeserver's, through the internal API (replace_allowed), as
// Synapse's org.matrix.cross_signing_reset stage asks an account manager
// to approve the reset.
type uiaBody struct {
	Flows   []uiaFlow      `json:"flows"`
	Params  map[string]any `json:"params"`
	Session string         `json:"session"`
	Error   string         `json:"error"`
}

type uiaFlow struct {
	Stages []string `json:"stages"`
}

// CrossSigningResetStage is the stage the 401 of a refused replacement
// offers (Synapse's, for servers whose accounts are managed elsewhere).
const CrossSigningResetStage = "org.matrix.cross_signing_reset"

func newSession() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// deviceSigningUpload answers POST /_matrix/client/v3/keys/device_signing/upload.
func (a *api) deviceSigningUpload(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	var k devicelists.UploadSigningKeys
	if err := readObject(w, r, maxInternalBytes, &k); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	err := a.devices.UploadCrossSigning(r.Context(), dev.UserID, k)
	if errors.Is(err, devicelists.ErrReplaceNeedsAuth) {
		writeJSON(w, http.StatusUnauthorized, uiaBody{
			Flows:   []uiaFlow{{Stages: []string{CrossSigningResetStage}}},
			Params:  map[string]any{},
			Session: newSession(),
			Error: "Replacing cross-signing keys needs user-interactive auth, which this server cannot do: " +
				"the homeserver must allow the replacement first.",
		})
		return
	}
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

// signaturesUpload answers POST /_matrix/client/v3/keys/signatures/upload.
func (a *api) signaturesUpload(w http.ResponseWriter, r *http.Request) {
	a.uploadSignatures(w, r, deviceFrom(r).UserID)
}

func (a *api) uploadSignatures(w http.ResponseWriter, r *http.Request, signer string) {
	var body map[string]map[string]json.RawMessage
	if err := readObject(w, r, maxInternalBytes, &body); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	res, err := a.devices.UploadSignatures(r.Context(), signer, body)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// internalSignatures answers POST /_todeviced/internal/v1/users/{userId}/signatures:
// the client endpoint for a homeserver that keeps it.
func (a *api) internalSignatures(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	a.uploadSignatures(w, r, userID)
}

// allowCrossSigningReplacement answers POST
// /_todeviced/internal/v1/users/{userId}/cross_signing/replace_allowed: the
// user may replace their cross-signing keys through the client API without
// user-interactive auth for devicelists.ReplaceWindow.
func (a *api) allowCrossSigningReplacement(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	until, err := a.devices.AllowCrossSigningReplacement(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"updatable_without_uia_before_ms": until.UnixMilli()})
}
