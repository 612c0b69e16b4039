package keyspace

// Image generation. Jobs travel on Stream("images") (dead letters on
// DeadLetter("images")); results come back to the process that waits for
// them through its inbox; images kept for clients that asked for a URL live
// under ImageFile. None of these keys is touched by a Lua script or MULTI
// together with another, so they carry no hash tag.

// ImageInbox is the list one relay process receives its image results on
// (one entry per finished job, JSON). inbox names the process (its consumer
// name); the worker that finishes a job pushes onto the inbox the job names
// and refreshes the list's TTL, so the inbox of a process that died expires.
func (k Keyspace) ImageInbox(inbox string) string { return k.join("images", "inbox", inbox) }

// ImageResult is the result of one finished image job (the JSON pushed to the
// inbox), kept until the job's deadline so a redelivered job re-sends it
// instead of generating again.
func (k Keyspace) ImageResult(jobID string) string { return k.join("images", "result", jobID) }

// ImageFile is a hash holding one generated image that the relay serves at
// /v1/images/files/<id>: fields type (its MIME type) and data (its bytes).
// It expires an hour after it was made.
func (k Keyspace) ImageFile(id string) string { return k.join("images", "file", id) }
