// redistore (the gorilla/sessions store on redigo) against a real sessiond, as a Go web
// app on the same host would use it: a redigo pool dialing the daemon's Unix socket,
// sessions saved into an httptest response and loaded back by a new request that
// carries its Set-Cookie. Also a lock taken with redigo alone (SET NX PX, released
// by compare-and-delete under WATCH).
//
//	session_store scenarios <socket path>
//	    runs every scenario and prints one JSON object of observations;
//	session_store restart <socket path>
//	    saves a session and prints {"key": ...}, waits for a line on stdin (the
//	    caller restarts the daemon meanwhile), then loads the session through the
//	    same store, whose pooled connection died with the daemon, and prints
//	    {"is_new": ..., "values": ...}.
//
// tests/test_frameworks.py builds it (GOPATH mode, on Debian's packaged sources) and
// checks the observations. Exits 1 with {"error": ...} on any unexpected error.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"time"

	"github.com/boj/redistore"
	"github.com/gomodule/redigo/redis"
	"github.com/gorilla/sessions"
)

const cookieName = "app_session"

// The key pair an app would load from its configuration: a hash key for the cookie.
var hashKey = []byte("sessiond-test-hash-key-32-bytes!")

// Profile is an application type kept in a session: gob needs it registered.
type Profile struct {
	Name  string
	Roles []string
}

func init() {
	gob.Register(Profile{})
}

// How many idle connections the pools found dead and replaced.
var staleConnections int

// newPool is the pool an app configures: dial the socket, check idle connections
// with PING before use (as redistore.NewRediStore's own pool does).
func newPool(socket string) *redis.Pool {
	return &redis.Pool{
		MaxIdle:     4,
		IdleTimeout: 240 * time.Second,
		Dial:        func() (redis.Conn, error) { return redis.Dial("unix", socket) },
		TestOnBorrow: func(c redis.Conn, _ time.Time) error {
			_, err := c.Do("PING")
			if err != nil {
				staleConnections++
			}
			return err
		},
	}
}

func newStore(socket string, serializer redistore.SessionSerializer) *redistore.RediStore {
	store, err := redistore.NewRediStoreWithPool(newPool(socket), hashKey)
	check(err)
	if serializer != nil {
		store.SetSerializer(serializer)
	}
	return store
}

// browser carries the session cookie from one response to the next request.
type browser struct {
	cookie *http.Cookie
}

// visit runs one request through store: handle gets the session, and what it
// returns is recorded; the session is saved as a handler would before writing.
func (b *browser) visit(store sessions.Store, handle func(*sessions.Session)) (*sessions.Session, *http.Cookie) {
	req := httptest.NewRequest("GET", "/", nil)
	if b.cookie != nil {
		req.AddCookie(b.cookie)
	}
	rec := httptest.NewRecorder()
	session, err := store.Get(req, cookieName)
	check(err)
	handle(session)
	check(session.Save(req, rec))
	var set *http.Cookie
	for _, c := range rec.Result().Cookies() {
		if c.Name == cookieName {
			set = c
		}
	}
	if set != nil && set.MaxAge >= 0 {
		b.cookie = &http.Cookie{Name: set.Name, Value: set.Value}
	}
	return session, set
}

// load reads the session a new request with the browser's cookie finds (nothing saved).
func (b *browser) load(store sessions.Store) *sessions.Session {
	req := httptest.NewRequest("GET", "/", nil)
	if b.cookie != nil {
		req.AddCookie(b.cookie)
	}
	session, err := store.New(req, cookieName)
	check(err)
	return session
}

// plain renders session values for JSON: keys with fmt, values as they marshal.
func plain(values map[interface{}]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(values))
	for k, v := range values {
		if b, ok := v.([]byte); ok {
			v = fmt.Sprintf("%d bytes", len(b))
		}
		out[fmt.Sprint(k)] = v
	}
	return out
}

func key(session *sessions.Session) string { return "session_" + session.ID }

// gobFlow: the default serializer, through two store instances with their own pools.
func gobFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	app, other := newStore(socket, nil), newStore(socket, nil)
	defer app.Close()
	defer other.Close()
	app.SetMaxAge(600)
	other.SetMaxAge(600)

	b := &browser{}
	s, set := b.visit(app, func(s *sessions.Session) {
		out["is_new"] = s.IsNew
		s.Values["user"] = "alice"
		s.Values["cart"] = []int{1, 2, 3}
		s.Values["profile"] = Profile{Name: "Zoë ✓", Roles: []string{"admin"}}
	})
	out["key"] = key(s)
	out["cookie_max_age"] = set.MaxAge

	loaded := b.load(other) // another instance, another pool: only the daemon is shared
	out["other_store_is_new"] = loaded.IsNew
	out["other_store_values"] = plain(loaded.Values)

	b.visit(other, func(s *sessions.Session) { s.Values["visits"] = 2 })
	out["after_update"] = plain(b.load(app).Values)

	stranger := &browser{}
	out["stranger_is_new"] = stranger.load(app).IsNew

	// Logging out: MaxAge -1 and Save, as gorilla/sessions documents.
	_, set = b.visit(app, func(s *sessions.Session) { s.Options.MaxAge = -1 })
	out["logout_cookie_max_age"] = set.MaxAge
	out["logout_cookie_value"] = set.Value
	gone := b.load(other)
	out["after_logout_is_new"] = gone.IsNew
	out["after_logout_values"] = plain(gone.Values)

	// A session the test reads with redis-py, left in place.
	kept := &browser{}
	s, _ = kept.visit(app, func(s *sessions.Session) { s.Values["user"] = "kept" })
	out["kept_key"] = key(s)
	return out
}

// jsonFlow: redistore.JSONSerializer, whose stored value the test reads as JSON.
func jsonFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	store := newStore(socket, redistore.JSONSerializer{})
	defer store.Close()
	store.SetMaxAge(300)
	b := &browser{}
	s, _ := b.visit(store, func(s *sessions.Session) {
		s.Values["user"] = "bob"
		s.Values["n"] = 1
	})
	out["key"] = key(s)
	b.visit(store, func(s *sessions.Session) { s.Values["n"] = s.Values["n"].(float64) + 1 })
	out["loaded"] = plain(b.load(store).Values)
	return out
}

// defaultsFlow: a store left as NewRediStore makes it (its own pool, MaxAge 30
// days), and one on NewRediStoreWithDB's "0" (SELECT 0 on each new connection).
func defaultsFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	store, err := redistore.NewRediStore(2, "unix", socket, "", hashKey)
	check(err)
	defer store.Close()
	b := &browser{}
	s, set := b.visit(store, func(s *sessions.Session) { s.Values["user"] = "carol" })
	out["key"] = key(s)
	out["cookie_max_age"] = set.MaxAge
	out["loaded"] = plain(b.load(store).Values)

	db0, err := redistore.NewRediStoreWithDB(2, "unix", socket, "", "0", hashKey)
	check(err)
	defer db0.Close()
	b = &browser{}
	b.visit(db0, func(s *sessions.Session) { s.Values["user"] = "dave" })
	out["db0_loaded"] = plain(b.load(db0).Values)
	return out
}

// bigFlow: a 64 KiB binary value, past redistore's default 4096-byte limit.
func bigFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	store := newStore(socket, nil)
	defer store.Close()
	blob := make([]byte, 64*1024)
	_, err := rand.Read(blob)
	check(err)
	b := &browser{}
	req := httptest.NewRequest("GET", "/", nil)
	s, err := store.Get(req, cookieName)
	check(err)
	s.Values["blob"] = blob
	out["over_default_limit"] = errString(s.Save(req, httptest.NewRecorder()))
	store.SetMaxLength(0)
	b.visit(store, func(s *sessions.Session) { s.Values["blob"] = blob })
	got, _ := b.load(store).Values["blob"].([]byte)
	out["roundtrip"] = bytes.Equal(got, blob)
	return out
}

// manyFlow: more sessions than the daemon keeps in memory, each read back after all
// were written (the first ones have been evicted to the store by then).
func manyFlow(socket string, count int) map[string]interface{} {
	store := newStore(socket, nil)
	defer store.Close()
	browsers := make([]*browser, count)
	for i := range browsers {
		browsers[i] = &browser{}
		browsers[i].visit(store, func(s *sessions.Session) { s.Values["i"] = i })
	}
	intact := 0
	for i, b := range browsers {
		s := b.load(store)
		if !s.IsNew && s.Values["i"] == i {
			intact++
		}
	}
	return map[string]interface{}{"saved": count, "intact": intact}
}

// expiryFlow: a session saved with MaxAge 1 is gone once its key expires. The key
// is polled with EXISTS, which does not renew a sliding TTL.
func expiryFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	store := newStore(socket, nil)
	defer store.Close()
	b := &browser{}
	s, _ := b.visit(store, func(s *sessions.Session) {
		s.Options.MaxAge = 1 // this session only: the cookie codec keeps the store's
		s.Values["user"] = "erin"
	})
	conn := store.Pool.Get()
	defer conn.Close()
	pttl, err := redis.Int(conn.Do("PTTL", key(s)))
	check(err)
	out["pttl"] = pttl
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, err := redis.Int(conn.Do("EXISTS", key(s)))
		check(err)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			check(errors.New("the session with MaxAge 1 did not expire"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := b.load(store)
	out["after_expiry_is_new"] = after.IsNew
	out["after_expiry_values"] = plain(after.Values)
	return out
}

// lockFlow: a lock taken with redigo alone, as Go apps do without a lock library:
// SET NX PX with a token, released by compare-and-delete in a WATCH transaction.
func lockFlow(socket string) map[string]interface{} {
	out := map[string]interface{}{}
	pool := newPool(socket)
	defer pool.Close()
	conn := pool.Get()
	defer conn.Close()
	suffix := make([]byte, 8)
	_, err := rand.Read(suffix)
	check(err)
	lock := fmt.Sprintf("lock_%x", suffix)
	acquire := func(token string) interface{} {
		reply, err := redis.String(conn.Do("SET", lock, token, "NX", "PX", 30000))
		if err == redis.ErrNil {
			return nil
		}
		check(err)
		return reply
	}
	out["key"] = lock
	out["acquire"] = acquire("mine")
	out["acquire_taken"] = acquire("theirs")
	out["pttl"], err = redis.Int(conn.Do("PTTL", lock))
	check(err)
	out["release_with_other_token"] = release(conn, lock, "theirs")
	out["release"] = release(conn, lock, "mine")
	out["release_again"] = release(conn, lock, "mine")
	out["acquire_after_release"] = acquire("theirs")
	return out
}

// release deletes lock if it still holds token; false if it holds another or none.
func release(conn redis.Conn, lock, token string) bool {
	_, err := conn.Do("WATCH", lock)
	check(err)
	current, err := redis.String(conn.Do("GET", lock))
	if err == redis.ErrNil || (err == nil && current != token) {
		_, err = conn.Do("UNWATCH")
		check(err)
		return false
	}
	check(err)
	check(conn.Send("MULTI"))
	check(conn.Send("DEL", lock))
	deleted, err := redis.Ints(conn.Do("EXEC"))
	if err == redis.ErrNil {
		return false // the lock changed since WATCH: not ours to delete any more
	}
	check(err)
	return len(deleted) == 1 && deleted[0] == 1
}

// pingReply: the reply redistore's ping compares with "PONG", with its Go type.
func pingReply(socket string) string {
	conn, err := redis.Dial("unix", socket)
	check(err)
	defer conn.Close()
	reply, err := conn.Do("PING")
	check(err)
	return fmt.Sprintf("%T %v", reply, reply)
}

func restart(socket string) {
	store := newStore(socket, nil)
	defer store.Close()
	store.SetMaxAge(600)
	b := &browser{}
	s, _ := b.visit(store, func(s *sessions.Session) { s.Values["user"] = "frank" })
	emit(map[string]interface{}{"key": key(s)})
	_, err := bufio.NewReader(os.Stdin).ReadString('\n')
	check(err)
	loaded := b.load(store)
	emit(map[string]interface{}{
		"is_new":            loaded.IsNew,
		"values":            plain(loaded.Values),
		"stale_connections": staleConnections,
	})
}

func errString(err error) interface{} {
	if err == nil {
		return nil
	}
	return err.Error()
}

func emit(v interface{}) {
	line, err := json.Marshal(v)
	check(err)
	fmt.Println(string(line))
}

type failure struct{ err error }

func check(err error) {
	if err != nil {
		panic(failure{err})
	}
}

func main() {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(failure); ok {
				emit(map[string]string{"error": f.err.Error()})
				os.Exit(1)
			}
			panic(r)
		}
	}()
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: session_store scenarios|restart <socket path>")
		os.Exit(2)
	}
	mode, socket := os.Args[1], os.Args[2]
	switch mode {
	case "scenarios":
		emit(map[string]interface{}{
			"go":       runtime.Version(),
			"ping":     pingReply(socket),
			"gob":      gobFlow(socket),
			"json":     jsonFlow(socket),
			"defaults": defaultsFlow(socket),
			"big":      bigFlow(socket),
			"many":     manyFlow(socket, 120),
			"expiry":   expiryFlow(socket),
			"lock":     lockFlow(socket),
		})
	case "restart":
		restart(socket)
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
		os.Exit(2)
	}
}
