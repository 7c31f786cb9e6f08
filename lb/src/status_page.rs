//! The status page (`GET /`, `/status`): one self-contained HTML page (inline CSS and script, no
//! external resources) rendered from a [`Snapshot`] on the server, so it reads without JavaScript;
//! the script then fetches `/v1/status` every 2 s and re-renders the same markup in the browser.
//! The two renderers build identical rows (the end-to-end test reads both). Every string that
//! comes from the config or the cluster is escaped.

use std::fmt::Write;

use crate::status::{BackendStatus, Snapshot};

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// 1.5K, 12M: counts in three significant characters (the same rule as the script's `num`).
fn num(n: f64) -> String {
    let units = ["", "K", "M", "G", "T", "P"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{}", v.round())
    } else if v < 10.0 {
        format!("{:.1}{}", v, units[i])
    } else {
        format!("{:.0}{}", v, units[i])
    }
}

fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else { return "-".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{:.1} {}", v, units[i])
    }
}

/// 42s, 5m, 3h, 2d (the same rule as the script's `dur`).
fn dur(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{}s", s.floor())
    } else if s < 3600.0 {
        format!("{}m", (s / 60.0).floor())
    } else if s < 86400.0 {
        format!("{}h", (s / 3600.0).floor())
    } else {
        format!("{}d", (s / 86400.0).floor())
    }
}

fn ago(now: f64, t: Option<f64>) -> String {
    t.map_or("-".into(), |t| format!("{} ago", dur(now - t)))
}

fn opt(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| num(n as f64))
}

const CSS: &str = r#"
:root{--bg:#f6f7f9;--fg:#1b1f24;--mut:#667085;--line:#e3e6ea;--up:#e8f6ec;--upb:#2e9e55;--down:#fde8e8;--downb:#d92d20;--drain:#fff4e0;--drainb:#d98a00;--maint:#eceef2;--maintb:#7a8494;--hd:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#15181c;--fg:#e6e8eb;--mut:#98a1ad;--line:#2b3037;--up:#13291b;--upb:#3fbf6a;--down:#3a1717;--downb:#ff6b5e;--drain:#33280f;--drainb:#f0a92a;--maint:#23272d;--maintb:#98a1ad;--hd:#1c2026}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-variant-numeric:tabular-nums}
header{position:sticky;top:0;z-index:2;background:var(--hd);border-bottom:1px solid var(--line);padding:8px 14px;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:baseline}
header h1{font-size:16px;margin:0 8px 0 0}
.chip{white-space:nowrap;color:var(--mut)}.chip b{color:var(--fg);font-weight:600}
.bad{color:var(--downb)!important}.good{color:var(--upb)!important}
main{padding:6px 14px 24px;max-width:1600px}
h2{font-size:14px;margin:16px 0 6px;display:flex;gap:10px;align-items:baseline}h2 small{color:var(--mut);font-weight:400}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px;background:var(--hd)}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 8px;text-align:left;white-space:nowrap;border-bottom:1px solid var(--line)}
th{position:sticky;top:0;background:var(--hd);color:var(--mut);font-weight:600;font-size:12px}
td.n,th.n{text-align:right}
td.why{white-space:normal;min-width:14em;max-width:40em;color:var(--mut)}
tr.pool td{background:var(--bg);font-weight:600;border-top:2px solid var(--line)}
tr.st-UP td:first-child,tr.st-MASTER td:first-child{box-shadow:inset 4px 0 var(--upb)}
tr.st-DOWN td:first-child,tr.st-FAULT td:first-child,tr.st-INIT td:first-child{box-shadow:inset 4px 0 var(--downb)}
tr.st-DRAIN td:first-child{box-shadow:inset 4px 0 var(--drainb)}
tr.st-MAINT td:first-child,tr.st-BACKUP td:first-child{box-shadow:inset 4px 0 var(--maintb)}
tr.st-UP,tr.st-MASTER{background:var(--up)}tr.st-DOWN,tr.st-FAULT,tr.st-INIT{background:var(--down)}tr.st-DRAIN{background:var(--drain)}tr.st-MAINT{background:var(--maint)}
.state{font-weight:700;letter-spacing:.02em}
tr.st-UP .state,tr.st-MASTER .state{color:var(--upb)}tr.st-DOWN .state,tr.st-FAULT .state,tr.st-INIT .state{color:var(--downb)}tr.st-DRAIN .state{color:var(--drainb)}tr.st-MAINT .state,tr.st-BACKUP .state{color:var(--maintb)}
.ov{font-size:11px;color:var(--drainb);margin-left:4px}
.empty{color:var(--mut);padding:8px}
footer{color:var(--mut);padding:0 14px 16px;font-size:12px}
@media (max-width:700px){body{font-size:12px}header{padding:6px 8px}main{padding:4px 6px 16px}th,td{padding:3px 5px}.wide{display:none}}
"#;

/// The script: fetches `/v1/status` every 2 s and renders the same markup as [`render`]. It
/// builds strings with `e()` escaping, like the server does with [`esc`].
const SCRIPT: &str = r#"
(function(){
var $=function(i){return document.getElementById(i)};
function e(s){return String(s==null?'':s).replace(/[&<>"']/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]})}
function num(n){var u=['','K','M','G','T','P'],i=0;while(n>=1000&&i<u.length-1){n/=1000;i++}return i==0?String(Math.round(n)):(n<10?n.toFixed(1):n.toFixed(0))+u[i]}
function by(n){if(n==null)return '-';var u=['B','KiB','MiB','GiB','TiB','PiB'],v=n,i=0;while(v>=1024&&i<u.length-1){v/=1024;i++}return i==0?n+' B':v.toFixed(1)+' '+u[i]}
function dur(s){s=Math.max(0,s);return s<60?Math.floor(s)+'s':s<3600?Math.floor(s/60)+'m':s<86400?Math.floor(s/3600)+'h':Math.floor(s/86400)+'d'}
function ago(now,t){return t==null?'-':dur(now-t)+' ago'}
function opt(n){return n==null?'-':num(n)}
function tm(t){var d=new Date(t*1000);return d.toISOString().slice(11,19)}
var R=window.__keel={e:e,num:num,by:by,dur:dur,ago:ago,opt:opt,tm:tm};
function render(s){
  var t0=performance.now();
  $('hdr').innerHTML=R.header(s);
  $('fe').innerHTML=R.frontends(s);
  $('pools').innerHTML=R.pools(s);
  var v=$('vrrp-sec');v.hidden=!s.vrrp;if(s.vrrp)$('vrrp').innerHTML=R.vrrp(s);
  var bg=$('bgp-sec');bg.hidden=!s.bgp;if(s.bgp)$('bgp').innerHTML=R.bgp(s);
  var nt=$('nat-sec');nt.hidden=!s.nat;if(s.nat)$('nat').innerHTML=R.nat(s);
  var sv=$('svc-sec');sv.hidden=!s.services;if(s.services)$('svc').innerHTML=R.services(s);
  $('ev').innerHTML=R.events(s);
  // How long a refresh takes in this browser (the benchmark reads it from the DOM).
  document.body.setAttribute('data-render-ms',(performance.now()-t0).toFixed(1));
}
function tick(){
  var x=new XMLHttpRequest();x.open('GET','/v1/status');x.timeout=4000;
  x.onload=function(){if(x.status==200){try{render(JSON.parse(x.responseText));$('src').textContent='live';$('src').className='good'}catch(err){$('src').textContent='render error: '+err;$('src').className='bad'}}else{$('src').textContent='HTTP '+x.status;$('src').className='bad'}};
  x.onerror=x.ontimeout=function(){$('src').textContent='unreachable';$('src').className='bad'};
  x.send();
}
R.tick=tick;
window.addEventListener('load',function(){document.body.setAttribute('data-load-ms',performance.now().toFixed(0));tick();setInterval(tick,2000)});
})();
"#;

/// The script's renderers, kept next to the Rust ones below: same columns, same order.
const SCRIPT_RENDER: &str = r#"
(function(R){
var e=R.e,num=R.num,by=R.by,dur=R.dur,ago=R.ago,opt=R.opt,tm=R.tm;
R.header=function(s){
  var lr=s.config.lastReload, pu=0;s.pools.forEach(function(p){if(p.up)pu++});
  var h='<h1>keel-lb</h1>';
  h+='<span class="chip">config <b>'+e(s.config.path)+'</b> gen <b>'+s.config.generation+'</b></span>';
  h+='<span class="chip">last reload '+(lr?(lr.ok?'<b class="good">ok</b> ':'<b class="bad">FAILED</b> ')+ago(s.now,lr.at):'<b>none</b>')+'</span>';
  h+='<span class="chip">up <b>'+dur(s.now-s.startedAt)+'</b></span>';
  h+='<span class="chip">pools <b class="'+(pu==s.pools.length?'good':'bad')+'">'+pu+'/'+s.pools.length+'</b> up</span>';
  if(s.vrrp)h+='<span class="chip">vrrp <b class="'+(s.vrrp.running>=s.vrrp.configured?'good':'bad')+'">'+s.vrrp.running+'/'+s.vrrp.configured+'</b> running</span>';
  if(s.bgp){var est=0;s.bgp.neighbors.forEach(function(n){if(n.state=='Established')est++});h+='<span class="chip">bgp <b class="'+(s.bgp.frr.state=='ok'&&est>0&&est==s.bgp.neighbors.length?'good':'bad')+'">'+est+'/'+s.bgp.neighbors.length+'</b> established</span>'}
  h+='<span class="chip">v'+e(s.version)+' at <b>'+tm(s.now)+'</b> <span id="src">server</span></span>';
  if(lr&&!lr.ok)h+='<span class="chip bad">'+e(lr.error)+'</span>';
  return h;
};
R.frontends=function(s){
  var h='<table><thead><tr><th>Frontend</th><th>Listen</th><th>Proto</th><th>Pool</th><th class="n">Cur</th><th class="n">Limit</th><th class="n">Total</th><th class="n">Rate/s</th><th class="n">In</th><th class="n">Out</th></tr></thead><tbody>';
  var up={};s.pools.forEach(function(p){up[p.name]=p.up});
  s.frontends.forEach(function(f){
    h+='<tr class="st-'+(up[f.pool]?'UP':'DOWN')+'" data-frontend="'+e(f.name)+'"><td>'+e(f.name)+'</td><td>'+e(f.listen)+'</td><td>'+e(f.protocol)+'</td><td>'+e(f.pool)+'</td><td class="n">'+num(f.current)+'</td><td class="n">'+f.limit+'</td><td class="n">'+num(f.total)+'</td><td class="n">'+f.rate.toFixed(1)+'</td><td class="n">'+by(f.bytesIn)+'</td><td class="n">'+by(f.bytesOut)+'</td></tr>';
  });
  if(!s.frontends.length)h+='<tr><td colspan="10" class="empty">no frontends</td></tr>';
  return h+'</tbody></table>';
};
R.backend=function(s,p,b){
  var c=b.lastCheck, chk=c?(c.ok?'ok':'fail')+' '+ago(s.now,c.at):'-';
  return '<tr class="st-'+e(b.state)+'" data-pool="'+e(p.name)+'" data-backend="'+e(b.address)+'"><td>'+e(b.address)+'</td><td class="state">'+e(b.state)+(b.overridden?'<span class="ov" title="changed at run time">runtime</span>':'')+'</td><td class="n">'+b.weight+'</td><td>'+e(chk)+'</td><td class="why">'+e(c&&!c.ok?c.reason:'')+'</td><td class="n wide">'+num(b.checks)+'</td><td class="n wide">'+num(b.failedChecks)+'</td><td class="n">'+num(b.downs)+'</td><td class="n">'+dur(b.downtimeSeconds)+'</td><td>'+ago(s.now,b.lastChange)+'</td><td class="n">'+num(b.current)+'</td><td class="n">'+opt(b.total)+'</td><td class="n wide">'+by(b.bytesIn)+'</td><td class="n wide">'+by(b.bytesOut)+'</td><td class="n">'+opt(b.connectErrors)+'</td></tr>';
};
R.pools=function(s){
  var h='<table><thead><tr><th>Backend</th><th>State</th><th class="n">Wt</th><th>Last check</th><th>Why</th><th class="n wide">Checks</th><th class="n wide">Fails</th><th class="n">Downs</th><th class="n">Downtime</th><th>Changed</th><th class="n">Cur</th><th class="n">Total</th><th class="n wide">In</th><th class="n wide">Out</th><th class="n">Conn err</th></tr></thead><tbody>';
  s.pools.forEach(function(p){
    var up=0;p.backends.forEach(function(b){if(b.state=='UP')up++});
    h+='<tr class="pool" data-pool-head="'+e(p.name)+'"><td colspan="15">'+e(p.name)+' <small>'+e(p.balance)+' &middot; '+up+'/'+p.backends.length+' up'+(p.up?'':' &middot; <b class="bad">NO BACKEND AVAILABLE</b>')+'</small></td></tr>';
    p.backends.forEach(function(b){h+=R.backend(s,p,b)});
  });
  if(!s.pools.length)h+='<tr><td colspan="15" class="empty">no pools</td></tr>';
  return h+'</tbody></table>';
};
R.vrrp=function(s){
  var h='<table><thead><tr><th>Router</th><th class="n">VRID</th><th>Interface</th><th>State</th><th class="n">Prio</th><th>Master</th><th>VIPs</th><th>Last transition</th><th class="n">Adv in</th><th class="n">Adv out</th><th>Drops</th></tr></thead><tbody>';
  s.vrrp.routers.forEach(function(r){
    var t=r.lastTransition, d=[];for(var k in r.drops)d.push(k+' '+r.drops[k]);
    h+='<tr class="st-'+e(r.state)+'" data-router="'+e(r.name)+'"><td>'+e(r.name)+' <small>v'+r.version+' '+e(r.family)+'</small></td><td class="n">'+r.vrid+'</td><td>'+e(r.interface)+'</td><td class="state">'+e(r.state)+'</td><td class="n">'+r.priority+'</td><td>'+e(r.master||'-')+'</td><td>'+e(r.vips.join(' '))+'</td><td class="why">'+(t?e(ago(s.now,t.at)+': '+t.from+' \u2192 '+t.to+' ('+t.reason+')'):'-')+'</td><td class="n">'+num(r.advertsReceived)+'</td><td class="n">'+num(r.advertsSent)+'</td><td class="why">'+e(d.join(', ')||'-')+'</td></tr>';
  });
  if(!s.vrrp.routers.length)h+='<tr><td colspan="11" class="empty">no routers</td></tr>';
  return h+'</tbody></table>';
};
R.bgp=function(s){
  var b=s.bgp,f=b.frr,h=(b.error?'<p class="bad" data-bgp-error>not announcing: '+e(b.error)+'</p>':'')+(b.handoff?'<p data-handoff>handoff: forwarding to '+e(b.handoff.forwardingTo.join(', ')||'none')+(b.handoff.error?' <b class="bad">'+e(b.handoff.error)+'</b>':'')+'</p>':'')+'<p class="'+(f.state=='ok'?'':'bad')+'" data-frr="'+e(f.state)+'">FRR: '+e(f.state)+(f.readAt!=null?' '+ago(s.now,f.readAt):'')+(f.error?': '+e(f.error):'')+(b.bfd.error?'; BFD: '+e(b.bfd.error):'')+(b.draining?' &middot; <b>withdrawn: leaving</b>':'')+'</p>';
  h+='<table><thead><tr><th>VIP on '+e(b.interface)+'</th><th>State</th><th>Tracks</th></tr></thead><tbody>';
  b.vips.forEach(function(v){h+='<tr class="st-'+(v.announced?'UP':'DOWN')+'" data-bgp-vip="'+e(v.address)+'"><td>'+e(v.address)+'</td><td class="state">'+(v.announced?'ANNOUNCED':'WITHDRAWN')+'</td><td>'+e(v.trackPools.join(' ')||'-')+'</td></tr>'});
  h+='</tbody></table><table><thead><tr><th>Neighbor</th><th class="n">AS</th><th>State</th><th>BFD</th><th>Up</th><th class="n">Sent</th><th class="n">Received</th></tr></thead><tbody>';
  b.neighbors.forEach(function(n){
    var up=n.state=='Established';
    h+='<tr class="st-'+(up?'UP':'DOWN')+'" data-bgp-peer="'+e(n.peer)+'"><td>'+e(n.peer)+'</td><td class="n">'+(n.remoteAs==null?'-':n.remoteAs)+'</td><td class="state">'+e(n.state)+'</td><td>'+e(n.bfd||'-')+'</td><td>'+(up?dur(n.uptimeSeconds):'-')+'</td><td class="n">'+num(n.prefixesSent)+'</td><td class="n">'+num(n.prefixesReceived)+'</td></tr>';
  });
  if(!b.neighbors.length)h+='<tr><td colspan="7" class="empty">no BGP neighbors read from FRR</td></tr>';
  return h+'</tbody></table>';
};
R.nat=function(s){
  var n=s.nat,h='<p class="'+(n.error?'bad':'')+'" data-nat="'+(n.installed?'installed':'missing')+'">rules '+(n.installed?'installed':n.proxied?'NOT installed: served by the proxy meanwhile':'NOT installed')+(n.error?': '+e(n.error):'')+'</p>';
  h+='<table><thead><tr><th>Frontend</th><th>Listen</th><th>Proto</th><th>New connections to</th><th>Open flows</th></tr></thead><tbody>';
  n.frontends.forEach(function(f){var fl=f.flows||{},k=Object.keys(fl);h+='<tr class="st-'+(f.backends.length?'UP':'DOWN')+'" data-nat-frontend="'+e(f.name)+'"><td>'+e(f.name)+'</td><td>'+e(f.listen)+'</td><td>'+e(f.protocol)+'</td><td>'+(f.backends.length?e(f.backends.join(', ')):'none: refused')+'</td><td>'+(k.length?k.map(function(b){return e(b)+': '+fl[b]}).join(', '):'-')+'</td></tr>'});
  return h+'</tbody></table>';
};
R.services=function(s){
  var h='<table><thead><tr><th>Service</th><th>IPs</th><th>Ports</th><th class="n">Backends up</th><th>Last sync</th><th>Problems</th></tr></thead><tbody>';
  var list=s.services.services||[];
  list.forEach(function(v){
    var up=0,all=0,ports=[];(v.ports||[]).forEach(function(p){ports.push(p.port+'/'+p.protocol);(p.backends||[]).forEach(function(b){all++;if(b.up)up++})});
    var ls=v.lastSync, st=!v.served?'DOWN':(all&&up==0?'DOWN':'UP');
    h+='<tr class="st-'+st+'" data-service="'+e(v.service)+'"><td>'+e(v.service)+'</td><td>'+e((v.ips||[]).map(function(i){return i.ip}).join(' '))+'</td><td>'+e(ports.join(' '))+'</td><td class="n">'+up+'/'+all+'</td><td>'+(ls?e((ls.ok?'ok ':'FAILED ')+ago(s.now,ls.at)+(ls.ok?'':': '+ls.message)):'-')+'</td><td class="why">'+e((v.problems||[]).join('; '))+'</td></tr>';
  });
  if(!list.length)h+='<tr><td colspan="6" class="empty">no Services of type LoadBalancer</td></tr>';
  return h+'</tbody></table>';
};
R.events=function(s){
  var h='<table><thead><tr><th>Time (UTC)</th><th>Kind</th><th>Subject</th><th>What</th></tr></thead><tbody>';
  s.events.forEach(function(v){
    var st=/DOWN|FAIL/.test(v.message)?'DOWN':/UP|MASTER|reloaded|started/.test(v.message)?'UP':'MAINT';
    h+='<tr class="st-'+st+'"><td>'+tm(v.at)+'</td><td>'+e(v.kind)+'</td><td>'+e(v.subject)+'</td><td class="why">'+e(v.message)+'</td></tr>';
  });
  if(!s.events.length)h+='<tr><td colspan="4" class="empty">nothing happened yet</td></tr>';
  return h+'</tbody></table>';
};
})(window.__keel);
"#;

fn tm(t: f64) -> String {
    let s = (t.max(0.0) as u64) % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

fn header(s: &Snapshot) -> String {
    let mut h = String::from("<h1>keel-lb</h1>");
    let pu = s.pools.iter().filter(|p| p.up).count();
    let _ = write!(
        h,
        "<span class=\"chip\">config <b>{}</b> gen <b>{}</b></span>",
        esc(&s.config.path),
        s.config.generation
    );
    let lr = match &s.config.last_reload {
        Some(r) => format!(
            "{}{}",
            if r.ok {
                "<b class=\"good\">ok</b> "
            } else {
                "<b class=\"bad\">FAILED</b> "
            },
            ago(s.now, Some(r.at))
        ),
        None => "<b>none</b>".into(),
    };
    let _ = write!(h, "<span class=\"chip\">last reload {lr}</span>");
    let _ = write!(
        h,
        "<span class=\"chip\">up <b>{}</b></span>",
        dur(s.now - s.started_at)
    );
    let _ = write!(
        h,
        "<span class=\"chip\">pools <b class=\"{}\">{}/{}</b> up</span>",
        if pu == s.pools.len() { "good" } else { "bad" },
        pu,
        s.pools.len()
    );
    if let Some(v) = &s.vrrp {
        let _ = write!(
            h,
            "<span class=\"chip\">vrrp <b class=\"{}\">{}/{}</b> running</span>",
            if v.running >= v.configured {
                "good"
            } else {
                "bad"
            },
            v.running,
            v.configured
        );
    }
    if let Some(b) = &s.bgp {
        let est = b
            .neighbors
            .iter()
            .filter(|n| n.state == "Established")
            .count();
        let _ = write!(
            h,
            "<span class=\"chip\">bgp <b class=\"{}\">{}/{}</b> established</span>",
            if b.frr.state == "ok" && est > 0 && est == b.neighbors.len() {
                "good"
            } else {
                "bad"
            },
            est,
            b.neighbors.len()
        );
    }
    let _ = write!(
        h,
        "<span class=\"chip\">v{} at <b>{}</b> <span id=\"src\">server</span></span>",
        esc(&s.version),
        tm(s.now)
    );
    if let Some(r) = s.config.last_reload.as_ref().filter(|r| !r.ok) {
        let _ = write!(
            h,
            "<span class=\"chip bad\">{}</span>",
            esc(r.error.as_deref().unwrap_or_default())
        );
    }
    h
}

fn frontends(s: &Snapshot) -> String {
    let mut h = String::from("<table><thead><tr><th>Frontend</th><th>Listen</th><th>Proto</th><th>Pool</th><th class=\"n\">Cur</th><th class=\"n\">Limit</th><th class=\"n\">Total</th><th class=\"n\">Rate/s</th><th class=\"n\">In</th><th class=\"n\">Out</th></tr></thead><tbody>");
    for f in &s.frontends {
        let up = s.pools.iter().any(|p| p.name == f.pool && p.up);
        let _ = write!(
            h,
            "<tr class=\"st-{}\" data-frontend=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if up { "UP" } else { "DOWN" },
            esc(&f.name),
            esc(&f.name),
            esc(&f.listen),
            esc(&f.protocol),
            esc(&f.pool),
            num(f.current as f64),
            f.limit,
            num(f.total as f64),
            f.rate,
            bytes(Some(f.bytes_in)),
            bytes(Some(f.bytes_out)),
        );
    }
    if s.frontends.is_empty() {
        h.push_str("<tr><td colspan=\"10\" class=\"empty\">no frontends</td></tr>");
    }
    h.push_str("</tbody></table>");
    h
}

fn backend(h: &mut String, s: &Snapshot, pool: &str, b: &BackendStatus) {
    let c = b.last_check.as_ref();
    let chk = c.map_or("-".to_string(), |c| {
        format!(
            "{} {}",
            if c.ok { "ok" } else { "fail" },
            ago(s.now, Some(c.at))
        )
    });
    let _ = write!(
        h,
        "<tr class=\"st-{}\" data-pool=\"{}\" data-backend=\"{}\"><td>{}</td><td class=\"state\">{}{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"why\">{}</td><td class=\"n wide\">{}</td><td class=\"n wide\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n wide\">{}</td><td class=\"n wide\">{}</td><td class=\"n\">{}</td></tr>",
        esc(&b.state),
        esc(pool),
        esc(&b.address),
        esc(&b.address),
        esc(&b.state),
        if b.overridden {
            "<span class=\"ov\" title=\"changed at run time\">runtime</span>"
        } else {
            ""
        },
        b.weight,
        esc(&chk),
        esc(c.filter(|c| !c.ok).map_or("", |c| c.reason.as_str())),
        num(b.checks as f64),
        num(b.failed_checks as f64),
        num(b.downs as f64),
        dur(b.downtime_seconds),
        ago(s.now, b.last_change),
        num(b.current as f64),
        opt(b.total),
        bytes(b.bytes_in),
        bytes(b.bytes_out),
        opt(b.connect_errors),
    );
}

fn pools(s: &Snapshot) -> String {
    let mut h =
        String::with_capacity(512 + s.pools.iter().map(|p| p.backends.len()).sum::<usize>() * 700);
    h.push_str("<table><thead><tr><th>Backend</th><th>State</th><th class=\"n\">Wt</th><th>Last check</th><th>Why</th><th class=\"n wide\">Checks</th><th class=\"n wide\">Fails</th><th class=\"n\">Downs</th><th class=\"n\">Downtime</th><th>Changed</th><th class=\"n\">Cur</th><th class=\"n\">Total</th><th class=\"n wide\">In</th><th class=\"n wide\">Out</th><th class=\"n\">Conn err</th></tr></thead><tbody>");
    for p in &s.pools {
        let up = p.backends.iter().filter(|b| b.state == "UP").count();
        let _ = write!(
            h,
            "<tr class=\"pool\" data-pool-head=\"{}\"><td colspan=\"15\">{} <small>{} &middot; {}/{} up{}</small></td></tr>",
            esc(&p.name),
            esc(&p.name),
            esc(&p.balance),
            up,
            p.backends.len(),
            if p.up {
                ""
            } else {
                " &middot; <b class=\"bad\">NO BACKEND AVAILABLE</b>"
            }
        );
        for b in &p.backends {
            backend(&mut h, s, &p.name, b);
        }
    }
    if s.pools.is_empty() {
        h.push_str("<tr><td colspan=\"15\" class=\"empty\">no pools</td></tr>");
    }
    h.push_str("</tbody></table>");
    h
}

fn vrrp(s: &Snapshot) -> String {
    let mut h = String::from("<table><thead><tr><th>Router</th><th class=\"n\">VRID</th><th>Interface</th><th>State</th><th class=\"n\">Prio</th><th>Master</th><th>VIPs</th><th>Last transition</th><th class=\"n\">Adv in</th><th class=\"n\">Adv out</th><th>Drops</th></tr></thead><tbody>");
    let Some(v) = &s.vrrp else {
        return String::new();
    };
    for r in &v.routers {
        let t = r.last_transition.as_ref().map_or("-".to_string(), |t| {
            esc(&format!(
                "{}: {} \u{2192} {} ({})",
                ago(s.now, Some(t.at)),
                t.from,
                t.to,
                t.reason
            ))
        });
        let drops: Vec<String> = r.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let drops = if drops.is_empty() {
            "-".to_string()
        } else {
            drops.join(", ")
        };
        let _ = write!(
            h,
            "<tr class=\"st-{}\" data-router=\"{}\"><td>{} <small>v{} {}</small></td><td class=\"n\">{}</td><td>{}</td><td class=\"state\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"why\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"why\">{}</td></tr>",
            esc(&r.state),
            esc(&r.name),
            esc(&r.name),
            r.version,
            esc(&r.family),
            r.vrid,
            esc(&r.interface),
            esc(&r.state),
            r.priority,
            esc(r.master.as_deref().unwrap_or("-")),
            esc(&r.vips.join(" ")),
            t,
            num(r.adverts_received as f64),
            num(r.adverts_sent as f64),
            esc(&drops),
        );
    }
    if v.routers.is_empty() {
        h.push_str("<tr><td colspan=\"11\" class=\"empty\">no routers</td></tr>");
    }
    h.push_str("</tbody></table>");
    h
}

fn nat(s: &Snapshot) -> String {
    let Some(n) = &s.nat else {
        return String::new();
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<p class=\"{}\" data-nat=\"{}\">rules {}{}</p>",
        if n.error.is_some() { "bad" } else { "" },
        if n.installed { "installed" } else { "missing" },
        if n.installed {
            "installed"
        } else if n.proxied {
            "NOT installed: served by the proxy meanwhile"
        } else {
            "NOT installed"
        },
        n.error
            .as_ref()
            .map(|e| format!(": {}", esc(e)))
            .unwrap_or_default()
    );
    h.push_str("<table><thead><tr><th>Frontend</th><th>Listen</th><th>Proto</th><th>New connections to</th><th>Open flows</th></tr></thead><tbody>");
    for f in &n.frontends {
        let _ = write!(
            h,
            "<tr class=\"st-{}\" data-nat-frontend=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if f.backends.is_empty() { "DOWN" } else { "UP" },
            esc(&f.name),
            esc(&f.name),
            esc(&f.listen),
            esc(&f.protocol),
            if f.backends.is_empty() {
                "none: refused".to_string()
            } else {
                esc(&f.backends.join(", "))
            },
            esc(&crate::nat::flows_text(&f.flows))
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn bgp(s: &Snapshot) -> String {
    let Some(b) = &s.bgp else {
        return String::new();
    };
    let f = &b.frr;
    let mut h = String::new();
    if let Some(e) = &b.error {
        let _ = write!(
            h,
            "<p class=\"bad\" data-bgp-error>not announcing: {}</p>",
            esc(e)
        );
    }
    if let Some(ho) = &b.handoff {
        let to = if ho.forwarding_to.is_empty() {
            "none".to_string()
        } else {
            ho.forwarding_to.join(", ")
        };
        let _ = write!(
            h,
            "<p data-handoff>handoff: forwarding to {}{}</p>",
            esc(&to),
            ho.error
                .as_ref()
                .map(|e| format!(" <b class=\"bad\">{}</b>", esc(e)))
                .unwrap_or_default()
        );
    }
    let _ = write!(
        h,
        "<p class=\"{}\" data-frr=\"{}\">FRR: {}{}{}{}{}</p>",
        if f.state == "ok" { "" } else { "bad" },
        esc(&f.state),
        esc(&f.state),
        f.read_at
            .map(|t| format!(" {}", ago(s.now, Some(t))))
            .unwrap_or_default(),
        f.error
            .as_ref()
            .map(|e| format!(": {}", esc(e)))
            .unwrap_or_default(),
        b.bfd
            .error
            .as_ref()
            .map(|e| format!("; BFD: {}", esc(e)))
            .unwrap_or_default(),
        if b.draining {
            " &middot; <b>withdrawn: leaving</b>"
        } else {
            ""
        },
    );
    let _ = write!(
        h,
        "<table><thead><tr><th>VIP on {}</th><th>State</th><th>Tracks</th></tr></thead><tbody>",
        esc(&b.interface)
    );
    for v in &b.vips {
        let tracks = v.track_pools.join(" ");
        let _ = write!(
            h,
            "<tr class=\"st-{}\" data-bgp-vip=\"{}\"><td>{}</td><td class=\"state\">{}</td><td>{}</td></tr>",
            if v.announced { "UP" } else { "DOWN" },
            esc(&v.address),
            esc(&v.address),
            if v.announced { "ANNOUNCED" } else { "WITHDRAWN" },
            esc(if tracks.is_empty() { "-" } else { &tracks }),
        );
    }
    h.push_str("</tbody></table><table><thead><tr><th>Neighbor</th><th class=\"n\">AS</th><th>State</th><th>BFD</th><th>Up</th><th class=\"n\">Sent</th><th class=\"n\">Received</th></tr></thead><tbody>");
    for n in &b.neighbors {
        let up = n.state == "Established";
        let _ = write!(
            h,
            "<tr class=\"st-{}\" data-bgp-peer=\"{}\"><td>{}</td><td class=\"n\">{}</td><td class=\"state\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if up { "UP" } else { "DOWN" },
            esc(&n.peer),
            esc(&n.peer),
            n.remote_as.map_or("-".to_string(), |a| a.to_string()),
            esc(&n.state),
            esc(n.bfd.as_deref().unwrap_or("-")),
            if up { dur(n.uptime_seconds) } else { "-".into() },
            num(n.prefixes_sent as f64),
            num(n.prefixes_received as f64),
        );
    }
    if b.neighbors.is_empty() {
        h.push_str(
            "<tr><td colspan=\"7\" class=\"empty\">no BGP neighbors read from FRR</td></tr>",
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn services(s: &Snapshot) -> String {
    let mut h = String::from("<table><thead><tr><th>Service</th><th>IPs</th><th>Ports</th><th class=\"n\">Backends up</th><th>Last sync</th><th>Problems</th></tr></thead><tbody>");
    let empty = Vec::new();
    let list = s
        .services
        .as_ref()
        .and_then(|v| v["services"].as_array())
        .unwrap_or(&empty);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    for v in list {
        let (mut up, mut all, mut ports) = (0, 0, Vec::new());
        for p in v["ports"].as_array().into_iter().flatten() {
            ports.push(format!("{}/{}", p["port"], text(&p["protocol"])));
            for b in p["backends"].as_array().into_iter().flatten() {
                all += 1;
                up += usize::from(b["up"].as_bool() == Some(true));
            }
        }
        let served = v["served"].as_bool() == Some(true);
        let st = if !served || (all > 0 && up == 0) {
            "DOWN"
        } else {
            "UP"
        };
        let ips: Vec<String> = v["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| text(&i["ip"]))
            .collect();
        let ls = &v["lastSync"];
        let sync = if ls.is_object() {
            let ok = ls["ok"].as_bool() == Some(true);
            esc(&format!(
                "{}{}{}",
                if ok { "ok " } else { "FAILED " },
                ago(s.now, ls["at"].as_f64()),
                if ok {
                    String::new()
                } else {
                    format!(": {}", text(&ls["message"]))
                }
            ))
        } else {
            "-".into()
        };
        let problems: Vec<String> = v["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let name = text(&v["service"]);
        let _ = write!(
            h,
            "<tr class=\"st-{st}\" data-service=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{up}/{all}</td><td>{sync}</td><td class=\"why\">{}</td></tr>",
            esc(&name),
            esc(&name),
            esc(&ips.join(" ")),
            esc(&ports.join(" ")),
            esc(&problems.join("; ")),
        );
    }
    if list.is_empty() {
        h.push_str(
            "<tr><td colspan=\"6\" class=\"empty\">no Services of type LoadBalancer</td></tr>",
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn events(s: &Snapshot) -> String {
    let mut h = String::from("<table><thead><tr><th>Time (UTC)</th><th>Kind</th><th>Subject</th><th>What</th></tr></thead><tbody>");
    for e in &s.events {
        let m = &e.message;
        let st = if m.contains("DOWN") || m.contains("FAIL") {
            "DOWN"
        } else if m.contains("UP")
            || m.contains("MASTER")
            || m.contains("reloaded")
            || m.contains("started")
        {
            "UP"
        } else {
            "MAINT"
        };
        let _ = write!(
            h,
            "<tr class=\"st-{st}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"why\">{}</td></tr>",
            tm(e.at),
            esc(&e.kind),
            esc(&e.subject),
            esc(m),
        );
    }
    if s.events.is_empty() {
        h.push_str("<tr><td colspan=\"4\" class=\"empty\">nothing happened yet</td></tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let n_backends: usize = s.pools.iter().map(|p| p.backends.len()).sum();
    let mut h = String::with_capacity(16 * 1024 + n_backends * 800);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>keel-lb status</title><style>");
    h.push_str(CSS);
    h.push_str("</style></head><body><header id=\"hdr\">");
    h.push_str(&header(s));
    h.push_str("</header><main>");
    let _ = write!(
        h,
        "<section><h2>Frontends <small>listen address, connections, rate, bytes</small></h2><div class=\"scroll\" id=\"fe\">{}</div></section>",
        frontends(s)
    );
    let _ = write!(
        h,
        "<section><h2>Pools and backends <small>{} backends</small></h2><div class=\"scroll\" id=\"pools\">{}</div></section>",
        n_backends,
        pools(s)
    );
    let _ = write!(
        h,
        "<section id=\"vrrp-sec\"{}><h2>VRRP routers</h2><div class=\"scroll\" id=\"vrrp\">{}</div></section>",
        if s.vrrp.is_some() { "" } else { " hidden" },
        vrrp(s)
    );
    let _ = write!(
        h,
        "<section id=\"bgp-sec\"{}><h2>BGP <small>VIPs announced through FRR, its sessions</small></h2><div class=\"scroll\" id=\"bgp\">{}</div></section>",
        if s.bgp.is_some() { "" } else { " hidden" },
        bgp(s)
    );
    let _ = write!(
        h,
        "<section id=\"nat-sec\"{}><h2>NAT <small>mode: nat frontends, forwarded by the kernel</small></h2><div class=\"scroll\" id=\"nat\">{}</div></section>",
        if s.nat.is_some() { "" } else { " hidden" },
        nat(s)
    );
    let _ = write!(
        h,
        "<section id=\"svc-sec\"{}><h2>Services <small>type LoadBalancer, from the cluster</small></h2><div class=\"scroll\" id=\"svc\">{}</div></section>",
        if s.services.is_some() { "" } else { " hidden" },
        if s.services.is_some() { services(s) } else { String::new() }
    );
    let _ = write!(
        h,
        "<section><h2>Recent events <small>newest first, last {}</small></h2><div class=\"scroll\" id=\"ev\">{}</div></section>",
        crate::events::KEPT,
        events(s)
    );
    h.push_str("</main><footer>Refreshes every 2 s from <a href=\"/v1/status\">/v1/status</a> &middot; <a href=\"/v1/status.csv\">CSV</a> &middot; <a href=\"/metrics\">metrics</a></footer><script>");
    h.push_str(SCRIPT);
    h.push_str(SCRIPT_RENDER);
    h.push_str("</script></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::*;

    fn snapshot(evil: &str) -> Snapshot {
        Snapshot {
            version: "0".into(),
            now: 1000.0,
            started_at: 10.0,
            config: ConfigStatus {
                path: format!("/etc/{evil}"),
                generation: 1,
                last_reload: Some(ReloadResult {
                    at: 990.0,
                    ok: false,
                    error: Some(evil.into()),
                }),
                state_file: None,
            },
            frontends: vec![FrontendStatus {
                name: evil.into(),
                listen: "127.0.0.1:80".into(),
                protocol: "tcp".into(),
                pool: evil.into(),
                current: 1,
                limit: 10,
                total: 1234,
                rate: 0.5,
                bytes_in: 2048,
                bytes_out: 0,
            }],
            pools: vec![PoolStatus {
                name: evil.into(),
                balance: "round_robin".into(),
                up: false,
                backends: vec![BackendStatus {
                    address: "127.0.0.1:81".into(),
                    state: "DOWN".into(),
                    healthy: false,
                    admin: "ready".into(),
                    overridden: true,
                    weight: 1,
                    last_check: Some(CheckStatus {
                        at: 999.0,
                        ok: false,
                        reason: evil.into(),
                    }),
                    checks: 3,
                    failed_checks: 2,
                    downs: 1,
                    downtime_seconds: 65.0,
                    last_change: Some(900.0),
                    current: 0,
                    total: Some(7),
                    bytes_in: None,
                    bytes_out: None,
                    connect_errors: Some(0),
                }],
            }],
            vrrp: Some(VrrpStatus {
                configured: 1,
                running: 1,
                routers: vec![RouterStatus {
                    name: evil.into(),
                    vrid: 51,
                    interface: "eth0".into(),
                    family: "ipv4".into(),
                    version: 3,
                    state: "MASTER".into(),
                    priority: 100,
                    master: Some("198.18.0.1".into()),
                    vips: vec!["198.18.0.100/32".into()],
                    last_transition: None,
                    adverts_sent: 3,
                    adverts_received: 0,
                    drops: Default::default(),
                }],
            }),
            services: Some(serde_json::json!({"writer": true, "services": [
                {"service": evil, "ips": [{"ip": "198.18.0.7"}], "ports": [], "served": true,
                 "problems": [evil], "lastSync": {"ok": false, "message": evil, "at": 900}}]})),
            bgp: Some(BgpStatus {
                interface: "keel-vips".into(),
                draining: false,
                vips: vec![BgpVipStatus {
                    address: "198.18.100.10".into(),
                    announced: true,
                    track_pools: vec![evil.into()],
                }],
                frr: FrrReadStatus {
                    state: "error".into(),
                    error: Some(evil.into()),
                    read_at: Some(999.0),
                },
                neighbors: vec![BgpNeighborStatus {
                    peer: evil.into(),
                    state: "Established".into(),
                    remote_as: Some(65000),
                    uptime_seconds: 61.0,
                    prefixes_sent: 1,
                    prefixes_received: 0,
                    bfd: Some("up".into()),
                }],
                bfd: FrrReadStatus {
                    state: "ok".into(),
                    error: None,
                    read_at: Some(999.0),
                },
                bfd_peers: vec![],
                handoff: Some(crate::status::HandoffStatus {
                    port: 7947,
                    peers: vec!["198.18.1.11".into()],
                    leaving: vec![],
                    forwarding_to: vec![],
                    error: Some(evil.into()),
                }),
                error: Some(evil.into()),
            }),
            nat: Some(crate::nat::NatStatus {
                installed: false,
                proxied: true,
                error: Some(evil.into()),
                frontends: vec![crate::nat::NatFrontendStatus {
                    name: evil.into(),
                    listen: "198.18.100.10:80".into(),
                    protocol: "tcp".into(),
                    backends: vec![evil.into()],
                    flows: [(evil.to_string(), 3)].into(),
                }],
            }),
            events: vec![EventStatus {
                at: 999.0,
                kind: "backend".into(),
                subject: evil.into(),
                message: evil.into(),
            }],
        }
    }

    #[test]
    fn every_string_from_config_or_cluster_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&x";
        let page = render(&snapshot(evil));
        // The only scripts are ours; the hostile name shows as text.
        assert_eq!(page.matches("<script>").count(), 1, "{page}");
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("\"'&x"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;x"));
    }

    #[test]
    fn rows_carry_their_state_and_names() {
        let page = render(&snapshot("web"));
        assert!(
            page.contains("<tr class=\"st-DOWN\" data-pool=\"web\" data-backend=\"127.0.0.1:81\">")
        );
        assert!(page.contains("data-router=\"web\""));
        assert!(page.contains("data-frontend=\"web\""));
        assert!(page.contains("data-service=\"web\""));
        assert!(page.contains("<tr class=\"st-UP\" data-bgp-peer=\"web\">"));
        assert!(page.contains("data-bgp-vip=\"198.18.100.10\""));
        assert!(page.contains("data-frr=\"error\""));
        assert!(page.contains("<tr class=\"st-UP\" data-nat-frontend=\"web\">"));
        assert!(page.contains("data-nat=\"missing\""));
        assert!(page.contains("1m"), "downtime 65 s shows as 1m");
        assert!(page.contains("runtime"), "an override is marked");
    }

    #[test]
    fn numbers_read_short() {
        assert_eq!(num(999.0), "999");
        assert_eq!(num(1234.0), "1.2K");
        assert_eq!(num(56_000_000.0), "56M");
        assert_eq!(bytes(Some(2048)), "2.0 KiB");
        assert_eq!(dur(65.0), "1m");
        assert_eq!(tm(3661.0), "01:01:01");
    }
}
