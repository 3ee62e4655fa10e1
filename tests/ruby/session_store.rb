# Rails' Redis-backed session stores against a real sessiond, through their own code.
#
#   ruby tests/ruby/session_store.rb <socket path>
#
# Three clients, each under its own key prefix:
#   - redis-rb itself (what every Rails store below is built on): the commands and
#     option forms those stores send, pipelined and in MULTI;
#   - ActionDispatch::Session::CacheStore on ActiveSupport::Cache::RedisCacheStore
#     (`config.session_store :cache_store` with `config.cache_store = :redis_cache_store`);
#   - ActionDispatch::Session::RedisStore from redis-actionpack (`:redis_store`), if
#     that gem is installed.
# The session middlewares run in a Rack stack driven by Rack::MockRequest, a cookie
# carried from one request to the next as a browser would. Prints one JSON object of
# observations; tests/test_frameworks.py checks them. Exits 1 with {"error": ...} on
# any exception.

require "json"
require "redis"
require "active_support"
require "active_support/cache"
require "active_support/cache/redis_cache_store"
require "action_dispatch"
require "action_dispatch/middleware/cookies"
require "action_dispatch/middleware/session/cache_store"
require "rack/mock"
begin
  require "redis-actionpack"
rescue LoadError
  # Optional outside the test command (which installs Debian's ruby-redis-actionpack):
  # reported as null, and the test says it skipped.
end

socket_path = ARGV.fetch(0) { abort "usage: ruby session_store.rb <socket path>" }

def redis_rb(redis, prefix)
  out = {}
  key = ->(name) { "#{prefix}#{name}" }
  out["set_ex"] = redis.set(key["a"], "alice", ex: 30)
  out["get"] = redis.get(key["a"])
  out["ttl"] = redis.ttl(key["a"])
  out["set_nx_taken"] = redis.set(key["a"], "mallory", nx: true)
  out["setex"] = redis.setex(key["b"], 60, "bob")
  out["mget"] = redis.mget(key["a"], key["b"], key["missing"])
  out["exists"] = redis.exists(key["a"], key["missing"])
  out["expire"] = redis.expire(key["b"], 300)
  out["ttl_b"] = redis.ttl(key["b"])
  out["pipelined"] = redis.pipelined do |p|
    p.set(key["p"], "1")
    p.incr(key["p"])
    p.get(key["p"])
  end
  out["multi"] = redis.multi do |m|
    m.set(key["m"], "x", px: 60_000)
    m.get(key["m"])
  end
  out["scan"] = redis.scan_each(match: "#{prefix}*", count: 2).to_a.sort
  out["del"] = redis.del(key["a"], key["missing"])
  out["get_deleted"] = redis.get(key["a"])
  binary = (0..255).map(&:chr).join.b
  redis.set(key["bin"], binary)
  out["binary_roundtrip"] = redis.get(key["bin"]).b == binary
  out
end

# A Rack app behind Rails' cookie and session middleware: /set?v=… stores a value
# in the session, /get reads it, /reset drops the session (reset_session).
def rails_stack(session_middleware, **options)
  app = lambda do |env|
    request = ActionDispatch::Request.new(env)
    case request.path
    when "/set" then request.session[:value] = request.params["v"]
    when "/reset" then request.reset_session
    end
    body = JSON.generate("value" => request.session[:value])
    [200, { "Content-Type" => "application/json" }, [body]]
  end
  ActionDispatch::Cookies.new(session_middleware.new(app, key: "_app_session", **options))
end

def browse(stack)
  client = Rack::MockRequest.new(stack)
  cookie = nil
  visit = lambda do |path, with_cookie: true|
    env = with_cookie && cookie ? { "HTTP_COOKIE" => cookie } : {}
    response = client.get(path, env)
    set = response.headers["Set-Cookie"]
    cookie = set.split(";").first if with_cookie && set
    JSON.parse(response.body)["value"]
  end
  out = {}
  out["set"] = visit.call("/set?v=hello")
  out["sid"] = cookie.split("=", 2).last
  out["mine"] = visit.call("/get")
  out["other"] = visit.call("/get", with_cookie: false)
  out["update"] = visit.call("/set?v=again")
  out["mine_after_update"] = visit.call("/get")
  out["sid_after_update"] = cookie.split("=", 2).last
  out["reset"] = visit.call("/reset")
  out["after_reset"] = visit.call("/get")
  out["sid_after_reset"] = cookie.split("=", 2).last
  out
end

begin
  redis = Redis.new(path: socket_path)
  out = {
    "versions" => {
      "ruby" => RUBY_VERSION,
      "redis-rb" => Redis::VERSION,
      "actionpack" => ActionPack.version.to_s,
      "redis-actionpack" => Gem.loaded_specs["redis-actionpack"]&.version&.to_s,
    },
    "redis_rb" => redis_rb(redis, "rb:"),
  }
  # As the README configures it: `config.cache_store = :redis_cache_store, {path: …}`.
  cache = ActiveSupport::Cache.lookup_store(
    :redis_cache_store, path: socket_path, namespace: "rails-cache", expires_in: 120
  )
  out["cache_store"] = browse(
    rails_stack(ActionDispatch::Session::CacheStore, cache: cache, expire_after: 90)
  )
  out["redis_store"] = if defined?(ActionDispatch::Session::RedisStore)
    browse(
      rails_stack(
        ActionDispatch::Session::RedisStore,
        servers: [{ path: socket_path, namespace: "rails-redis-store" }],
        expire_after: 90
      )
    )
  end
  puts JSON.generate(out)
rescue StandardError => e
  puts JSON.generate("error" => "#{e.class}: #{e.message}\n#{e.backtrace&.first(15)&.join("\n")}")
  exit 1
end
