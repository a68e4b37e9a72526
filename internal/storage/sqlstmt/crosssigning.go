package sqlstmt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// The statements of devicelists.CrossSigningTx: uploaded cross-signing keys
// and signatures (migration 00006).

var (
	allCrossSigningOf = New(`SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id = $1`)
	replaceableUntil  = New(`SELECT until_at FROM cross_signing_replaceable WHERE user_id = $1`)
	allowReplacement  = New(`
		INSERT INTO cross_signing_replaceable (user_id, until_at) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET until_at = excluded.until_at`)
	// putSignature's WHERE makes storing the same signature again touch no
	// row.
	putSignature = New(`
		INSERT INTO cross_signing_signatures
			(target_user_id, target_key_id, signer_user_id, signer_key_id, target_public, signature)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) DO UPDATE
			SET target_public = excluded.target_public, signature = excluded.signature
		WHERE cross_signing_signatures.target_public <> excluded.target_public
		   OR cross_signing_signatures.signature <> excluded.signature`)
	signaturesOf = New(`
		SELECT target_user_id, target_key_id, target_public, signer_user_id, signer_key_id, signature
		FROM cross_signing_signatures WHERE target_user_id {in $1}
		ORDER BY target_user_id, target_key_id, signer_user_id, signer_key_id`)
	appendSignatureChange = New(`
		INSERT INTO cross_signing_signature_stream (pos, viewer_user_id, target_user_id) VALUES ($1, $2, $3)`)
	signatureChanges = New(`
		SELECT DISTINCT target_user_id FROM cross_signing_signature_stream
		WHERE viewer_user_id = $1 AND pos > $2 AND pos <= $3`)
)

func (t DeviceTx) AllCrossSigningOf(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	cs, err := CrossSigningKeys(ctx, t.C, allCrossSigningOf, userID)
	return cs[userID], err
}

func (t DeviceTx) ReplaceableUntil(ctx context.Context, userID string) (time.Time, error) {
	var until time.Time
	if err := t.C.QueryRow(ctx, replaceableUntil, userID).Scan(&until); err != nil && !IsNoRows(err) {
		return time.Time{}, fmt.Errorf("reading the replacement allowance: %w", err)
	}
	return until, nil
}

func (t DeviceTx) AllowReplacement(ctx context.Context, userID string, until time.Time) error {
	return t.exec(ctx, "storing the replacement allowance", allowReplacement, userID, until)
}

func (t DeviceTx) PutSignature(ctx context.Context, s devicelists.Signature) (bool, error) {
	return t.changed(ctx, "storing a signature", putSignature,
		s.TargetUserID, s.TargetKeyID, s.SignerUserID, s.SignerKeyID, s.TargetPublic, s.Signature)
}

func (t DeviceTx) SignaturesOf(ctx context.Context, targets []string) ([]devicelists.Signature, error) {
	out, err := Collect(ctx, t.C, signaturesOf, []any{targets}, func(r Rows) (s devicelists.Signature, err error) {
		err = r.Scan(&s.TargetUserID, &s.TargetKeyID, &s.TargetPublic, &s.SignerUserID, &s.SignerKeyID, &s.Signature)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading signatures: %w", err)
	}
	return out, nil
}

func (t DeviceTx) AppendSignatureChange(ctx context.Context, pos int64, viewer, target string) error {
	return t.exec(ctx, "recording a signature change", appendSignatureChange, pos, viewer, target)
}

func (t DeviceTx) SignatureChanges(ctx context.Context, viewer string, from, to int64) ([]string, error) {
	return t.strings(ctx, "reading signature changes", signatureChanges, viewer, from, to)
}
