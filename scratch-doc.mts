import { serviceDocument } from './src/app/api.ts';
console.log(JSON.stringify(serviceDocument({profiles:true,transfers:true,orders:true,sagas:true}), null, 1));
