package federation

import "context"

// The admin's store methods are conformance-tested on the real backends
// (storetest); the sender's tests need none of them.

func (m *memStore) Destinations(context.Context, int) ([]DestinationState, error) { return nil, nil }
func (m *memStore) RetryNow(context.Context, string) (bool, error)                { return false, nil }
func (m *memStore) DropQueue(context.Context, string) (int, error)                { return 0, nil }
