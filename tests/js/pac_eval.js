// Evaluates a PAC file in node's JS engine, as a browser would, on a table of URLs.
// The PAC helper functions are the standard browser environment; isInNet refuses names so
// that a PAC that would make the workstation resolve DNS fails the test.
// Usage: node pac_eval.js FILE.pac '[["url", "host"], ...]'  -> JSON list of results
const vm = require('vm');
const fs = require('fs');
const ip2int = (ip) => ip.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
const context = {
  isPlainHostName: (host) => !host.includes('.') && !host.includes(':'),
  dnsDomainIs: (host, domain) => host.length >= domain.length && host.endsWith(domain),
  isInNet: (host, pattern, mask) => {
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(host)) throw new Error('isInNet would resolve ' + host);
    const m = ip2int(mask);
    return ((ip2int(host) & m) >>> 0) === ((ip2int(pattern) & m) >>> 0);
  },
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[2], 'utf8'), context);
const cases = JSON.parse(process.argv[3]);
console.log(JSON.stringify(cases.map(([url, host]) => context.FindProxyForURL(url, host))));
