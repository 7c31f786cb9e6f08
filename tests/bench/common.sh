# Shared by tests/bench/lb.sh and lb_hop.sh (sourced): the nginx backend and the arithmetic of the
# tables, so both measure and report alike.

# nginx_conf DIR LISTEN: one worker, a tiny response, no access log, keep-alive for the whole run.
nginx_conf() {
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  server { listen $2 backlog=4096; location / { return 200 "ok\n"; } }
}
NGINX
}

# wrk's latency (512.00us, 1.20ms, 1.01s) in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

TCK=$(getconf CLK_TCK)
# Busy ticks of the whole machine: user nice system idle iowait irq softirq steal, all but idle/iowait.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# median "v1 v2 v3 ...".
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# ratio A B: A/B as "0.83x", "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b+0 == 0) print "-"; else printf "%.2fx", a/b }'; }
