package keyspace

// VSSession is the hash that holds the shared Vertical Studio session, so
// every replica uses one login. Fields: gen (login generation, incremented
// by each login), at (login time, unix ms), cookie (the Cookie header value,
// sealed with secretbox), err and err_at (the last failed login's reason and
// time, unix ms).
func (k Keyspace) VSSession() string { return k.join("vs", "session") }

// VSLoginLock is held by the replica that is logging in to Vertical Studio;
// its value is that replica's random token.
func (k Keyspace) VSLoginLock() string { return k.Lock("vs-login") }

// OpenChats is the sorted set of throw-away Vertical Studio chats that were
// created and not yet queued for archiving (member: "<corner>:<chat id>",
// score: creation time, unix ms). It shares the archive stream's hash tag, so
// a chat moves from it to the stream atomically.
func (k Keyspace) OpenChats() string { return k.join("stream", "{archive}", "open") }
