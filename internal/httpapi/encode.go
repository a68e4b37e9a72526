package httpapi

import (
	"slices"
	"strconv"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// jsonAppender is a response body that writes its own JSON, byte for byte
// what json.Marshal writes for it (the matrix.AppendJSON helpers make
// that so): writeJSON uses it instead of json.Marshal. Only the hottest
// answers have one. encoding/json walks a /sync answer by reflection and
// compacts every event's content a byte at a time, which made encoding
// the largest CPU cost of a sync that hands out a message; TestAppenders
// compares each appender with json.Marshal.
type jsonAppender interface {
	appendJSON(b []byte) ([]byte, error)
}

func (s syncBody) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"next_batch":`...)
	b = matrix.AppendJSONString(b, s.NextBatch)
	b = append(b, `,"to_device":{"events":`...)
	b, err := appendEvents(b, s.ToDevice.Events)
	if err != nil {
		return b, err
	}
	b = append(b, '}')
	if s.DeviceLists != nil {
		b = append(b, `,"device_lists":{"changed":`...)
		b = appendStrings(b, s.DeviceLists.Changed)
		b = append(b, `,"left":`...)
		b = appendStrings(b, s.DeviceLists.Left)
		b = append(b, '}')
	}
	b = append(b, `,"rooms":{"join":{},"invite":{},"leave":{},"knock":{}},"account_data":{"events":`...)
	b = appendEmptyObjects(b, s.AccountData.Events)
	b = append(b, `},"presence":{"events":`...)
	b = appendEmptyObjects(b, s.Presence.Events)
	b = append(b, '}')
	if len(s.OneTimeKeysCount) > 0 {
		b = append(b, `,"device_one_time_keys_count":`...)
		b = appendCounts(b, s.OneTimeKeysCount)
	}
	if s.UnusedFallbackKeys != nil {
		b = append(b, `,"device_unused_fallback_key_types":`...)
		b = appendStrings(b, *s.UnusedFallbackKeys)
	}
	return append(b, '}'), nil
}

// appendEvents writes to-device events as inbox.Event's JSON tags say.
func appendEvents(b []byte, events []inbox.Event) ([]byte, error) {
	if events == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i, e := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"sender":`...)
		b = matrix.AppendJSONString(b, e.Sender)
		b = append(b, `,"type":`...)
		b = matrix.AppendJSONString(b, e.Type)
		b = append(b, `,"content":`...)
		var err error
		if b, err = matrix.AppendJSONValue(b, e.Content); err != nil {
			return b, err
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

func appendStrings(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = matrix.AppendJSONString(b, s)
	}
	return append(b, ']')
}

// appendEmptyObjects writes a []struct{}.
func appendEmptyObjects(b []byte, list []struct{}) []byte {
	if list == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "{}"...)
	}
	return append(b, ']')
}

// appendCounts writes a map[string]int with its keys sorted, as
// encoding/json does.
func appendCounts(b []byte, m map[string]int) []byte {
	var arr [8]string // the key algorithms a device has fit
	keys := arr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = matrix.AppendJSONString(b, k)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(m[k]), 10)
	}
	return append(b, '}')
}
